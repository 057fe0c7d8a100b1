"""Networks: backbones that end in a feature map, and the one grading model around them.

Every network is ``backbone -> global average pool -> linear head``. Keeping the head linear
over pooled features is what makes class-activation maps exact and cheap at inference
(Zhou et al. 2016, "Learning Deep Features for Discriminative Localization"): the CAM of
class c is the head's weights for c applied to each position of the last feature map, so
ONNX Runtime computes it without gradients.

:class:`GradingModel` also carries the run's *decision rule* (softmax, post-hoc logit
adjustment, an averaged ensemble of heads, ordinal cut points) as buffers, so that the
exported graph predicts exactly what evaluation measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------
# Backbones (registry: name -> builder returning (module, feature_channels))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactCNN(nn.Module):
    """A small VGG-style CNN that trains in seconds per epoch on 2 CPU cores at 64-128 px.

    Four stages of (3x3 stride-2 conv, 3x3 conv), widths ``width * (1, 2, 4, 8)``; a 64 px
    input ends in a 4 x 4 feature map, 128 px in 8 x 8.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [_conv_bn(cin, w, stride=2), _conv_bn(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, F, S/16, S/16)
        return self.features(x)


class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's parameter names (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """ResNet-18/34 trunk (no ``fc``), parameter names as in torchvision, so a torchvision
    state dict that the user downloaded loads with :func:`load_torchvision_weights`."""

    def __init__(self, blocks: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            cin = cout
        self.out_channels = 512

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, 512, S/32, S/32)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@dataclass(frozen=True)
class NetworkSpec:
    description: str
    build: Callable[[], nn.Module]


NETWORKS: dict[str, NetworkSpec] = {
    "compact": NetworkSpec("compact 8-layer CNN (~1.2 M parameters), the CPU default at 64-128 px", lambda: CompactCNN(24)),
    "compact-wide": NetworkSpec("compact CNN at double width (~4.7 M parameters)", lambda: CompactCNN(48)),
    "resnet18": NetworkSpec("ResNet-18 (11 M parameters), for GPUs; --pretrained loads torchvision weights", lambda: ResNet((2, 2, 2, 2))),
    "resnet34": NetworkSpec("ResNet-34 (21 M parameters), for GPUs; --pretrained loads torchvision weights", lambda: ResNet((3, 4, 6, 3))),
}


def build_backbone(name: str) -> nn.Module:
    """Backbone by registry name; an unknown name lists the valid ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}")
    return NETWORKS[name].build()


def load_torchvision_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision-format ResNet state dict (as saved by ``torch.save(model.state_dict())``).

    The classifier (``fc.*``) is dropped, since the head is re-initialised for our classes.
    Returns the names of backbone parameters the file did not provide (empty when complete).

    Raises
    ------
    ValueError
        The file is not a state dict, or its tensors do not fit this backbone (names the
        first mismatching key and both shapes).
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"pretrained weights {path}: file not found") from None
    except Exception as exc:  # pickle/zip errors on a wrong or corrupt file
        raise ValueError(f"pretrained weights {path}: not a PyTorch state dict ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained weights {path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = backbone.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"pretrained weights {path}: key {unknown[0]!r} has no place in this network ({len(unknown)} such keys); is it a ResNet of the same depth?")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"pretrained weights {path}: {k} has shape {tuple(v.shape)}, this network needs {tuple(own[k].shape)}")
    backbone.load_state_dict(state, strict=False)
    return [k for k in own if k not in state and not k.endswith("num_batches_tracked")]


# --------------------------------------------------------------------------------------
# The grading model: backbone + head(s) + decision rule

DECISION_RULES = ("softmax", "ordinal")
HEAD_TYPES = ("linear", "cosine")


class GradingModel(nn.Module):
    """``backbone -> GAP -> linear head(s)``, plus the decision rule that turns logits into
    class probabilities.

    Parameters
    ----------
    network : str
        Backbone registry name (see :data:`NETWORKS`).
    n_classes : int
        Number of grades C.
    out_dim : int
        Head outputs: C for classification, 1 for ordinal regression (a scalar grade score).
    n_heads : int
        K > 1 after a balanced-ensemble stage 2: K heads whose softmax outputs are averaged.
    rule : {"softmax", "ordinal"}
        ``softmax``: ``softmax(logits - logit_offset)`` (``logit_offset`` is zero unless a
        post-hoc logit adjustment set it to ``tau * log(prior)``, Menon et al. 2021).
        ``ordinal``: the score is cut at ``cuts`` (tuned for quadratic kappa on validation);
        class k gets probability proportional to ``exp(-d_k / T)``, d_k = distance from the
        score to the interval of class k, so argmax is exactly the cut-point grade.

    head : {"linear", "cosine"}
        ``cosine``: logits are cosine similarities between the normalised embedding and the
        normalised class weights (no bias), as LDAM needs (Cao et al. 2019 use a normed linear
        layer; the loss scales by s). At inference the cosines are multiplied by
        ``logit_scale`` (the loss's s) so that the probabilities are those the loss trained.
    logit_scale : float
        Inference scale of cosine logits (1 for a linear head).

    ``forward`` returns training logits (N, out_dim) of head 0; :meth:`predict` returns the
    deployed ``(probs (N, C), cam (N, C, h, w))``.
    """

    def __init__(self, network: str, n_classes: int, *, out_dim: int | None = None, n_heads: int = 1, rule: str = "softmax",
                 head: str = "linear", logit_scale: float = 1.0) -> None:
        super().__init__()
        if rule not in DECISION_RULES:
            raise ValueError(f"unknown decision rule {rule!r}; valid: {', '.join(DECISION_RULES)}")
        if head not in HEAD_TYPES:
            raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEAD_TYPES)}")
        self.head = head
        self.network, self.n_classes, self.rule = network, int(n_classes), rule
        self.out_dim = int(out_dim if out_dim is not None else n_classes)
        self.n_heads = int(n_heads)
        self.backbone = build_backbone(network)
        feat = self.backbone.out_channels
        self.feature_dim = feat
        init = nn.Linear(feat, self.out_dim)  # PyTorch's default initialisation of a linear head
        self.head_weight = nn.Parameter(init.weight.detach().clone().unsqueeze(0).repeat(self.n_heads, 1, 1))  # (K, out, F)
        self.head_bias = nn.Parameter(init.bias.detach().clone().unsqueeze(0).repeat(self.n_heads, 1))  # (K, out)
        self.register_buffer("logit_offset", torch.zeros(self.out_dim))
        self.register_buffer("cuts", torch.arange(max(self.n_classes - 1, 1), dtype=torch.float32) + 0.5)
        self.register_buffer("temperature", torch.tensor(0.25))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        if head == "cosine":
            with torch.no_grad():
                self.head_bias.zero_()
            self.head_bias.requires_grad_(False)

    def arch(self) -> dict:
        """What is needed to rebuild this module before loading its state dict."""
        return {"network": self.network, "n_classes": self.n_classes, "out_dim": self.out_dim, "n_heads": self.n_heads, "rule": self.rule, "head": self.head}

    def _weights(self) -> Tensor:
        """Head weights as applied: (K, out, F), row-normalised for a cosine head."""
        return l2_normalize(self.head_weight, dim=2) if self.head == "cosine" else self.head_weight

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean(dim=(2, 3))  # (B, F)

    def head_logits(self, z: Tensor) -> Tensor:
        """Deployed logits of every head for embeddings z: (K, B, out_dim) (cosines x scale)."""
        if self.head == "cosine":
            z = l2_normalize(z, dim=1)
        return self.logit_scale * (torch.einsum("bf,kof->kbo", z, self._weights()) + self.head_bias[:, None, :])

    def logits_from_embedding(self, z: Tensor) -> Tensor:
        """Training logits of head 0 for embeddings z (B, F): (B, out_dim). A cosine head gives
        unscaled cosines here: the loss applies its own scale (LDAM's s)."""
        if self.head == "cosine":
            return l2_normalize(z, dim=1) @ l2_normalize(self.head_weight[0], dim=1).t()
        return z @ self.head_weight[0].t() + self.head_bias[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_from_embedding(self.embed(x))  # (B, out_dim)

    def probs_from_embedding(self, z: Tensor) -> Tensor:
        logits = self.head_logits(z)  # (K, B, out)
        if self.rule == "ordinal":
            score = logits.mean(dim=0)[:, 0]  # (B,)
            lo = torch.cat([score.new_full((1,), -1e6), self.cuts])  # interval lower bounds (C,)
            hi = torch.cat([self.cuts, score.new_full((1,), 1e6)])
            dist = F.relu(lo[None, :] - score[:, None]) + F.relu(score[:, None] - hi[None, :])  # (B, C)
            return torch.softmax(-dist / self.temperature, dim=1)
        return torch.softmax(logits - self.logit_offset, dim=2).mean(dim=0)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Deployed outputs: class probabilities (N, C) and class-activation maps (N, C, h, w)."""
        fmap = self.backbone(x)  # (N, F, h, w)
        z = fmap.mean(dim=(2, 3))  # (N, F)
        probs = self.probs_from_embedding(z)
        w = self._weights().mean(dim=0)  # heads are linear, so their mean CAM is the CAM of the mean weights
        cam = torch.einsum("of,nfhw->nohw", w, fmap)  # (N, out, h, w)
        if self.head == "cosine":  # cosine logit = s * w_c . z / |z|: the CAM carries the same factor
            cam = cam * (self.logit_scale / z.norm(dim=1).clamp_min(1e-12))[:, None, None, None]
        if self.out_dim != self.n_classes:  # ordinal: one score map, shown for every grade
            cam = cam.expand(-1, self.n_classes, -1, -1)
        return probs, cam


def build_model(arch: dict) -> GradingModel:
    """Rebuild a :class:`GradingModel` from :meth:`GradingModel.arch`."""
    return GradingModel(arch["network"], arch["n_classes"], out_dim=arch.get("out_dim"), n_heads=arch.get("n_heads", 1), rule=arch.get("rule", "softmax"),
                        head=arch.get("head", "linear"))


def l2_normalize(x: Tensor, dim: int) -> Tensor:
    """``x / max(||x||, eps)`` along ``dim``: F.normalize's maths, written without the Expand
    node F.normalize exports, which ONNX Runtime's symbolic shape inference (run before int8
    quantisation) cannot handle."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


class CheckpointError(ValueError):
    """A model.pt that is missing, unreadable or not one of ours."""


def load_checkpoint(path: str | Path) -> tuple[GradingModel, dict]:
    """Load ``model.pt`` written by the trainer: the model (eval mode, CPU) and its record
    (``config``, ``class_names``, ``preprocess``, ``arch``, ...)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (train the run first)")
    try:
        # weights_only: a checkpoint is tensors and JSON-like data, so loading one someone else
        # sent cannot run code (no pickle of arbitrary objects).
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {first[:200]}); is it a drgrade model.pt?") from None
    if not isinstance(record, dict) or "arch" not in record or "state_dict" not in record:
        raise CheckpointError(f"{path}: not a drgrade checkpoint (no 'arch'/'state_dict')")
    model = build_model(record["arch"])
    model.load_state_dict(record["state_dict"])
    model.eval()
    return model, record
