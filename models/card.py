"""The model card: what an ONNX file says about itself.

Every ``model.onnx`` written by ``python -m export`` carries one JSON document in its
``metadata_props`` under :data:`CARD_KEY`, so the file alone is enough to grade a scan:
class names, input size and the preprocessing spec travel with the weights (as timm's
``pretrained_cfg`` does), together with the strategy, decision rule and test metrics.

Card fields (``format`` 1):

- ``format`` (int), ``name`` (run name), ``precision`` ("fp32" | "int8" | "fp16")
- ``class_names`` (list of str), ``input_size`` (int), ``preprocess`` (PreprocessSpec dict)
- ``input_name`` ("image"), ``output_names`` (["probs", "cam"])
- ``strategy`` (the Strategy dict), ``strategy_parts`` (one-line summary)
- ``decision_rule`` (dict: rule, tuned tau / cut points / heads, selected epoch)
- ``metrics`` (test-split summary: accuracy, balanced_accuracy, macro_f1, qwk, gmean, ece,
  mae_macro, referable)
- ``data_hash``, ``versions`` (package versions at training time), ``network``
"""

from __future__ import annotations

import json
from typing import Any

CARD_KEY = "drgrade.card"
CARD_FORMAT = 1
REQUIRED_FIELDS = ("format", "class_names", "input_size", "preprocess")
METRIC_SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "ece", "mae_macro", "referable")


class CardError(ValueError):
    """An ONNX file without a valid drgrade card (not one of ours, or damaged)."""


def parse_card(metadata: dict[str, str], *, source: str = "model") -> dict[str, Any]:
    """Card dict from an ONNX metadata map (``session.get_modelmeta().custom_metadata_map``)."""
    raw = metadata.get(CARD_KEY)
    if raw is None:
        raise CardError(f"{source}: no '{CARD_KEY}' entry in the ONNX metadata: not a drgrade model (export it with `python -m export RUN_DIR`)")
    try:
        card = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CardError(f"{source}: model card is not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_FIELDS if k not in card]
    if missing:
        raise CardError(f"{source}: model card lacks {', '.join(missing)}")
    if int(card["format"]) > CARD_FORMAT:
        raise CardError(f"{source}: model card format {card['format']} is newer than this drgrade ({CARD_FORMAT}); upgrade drgrade")
    return card


def card_json(card: dict[str, Any]) -> str:
    """Serialise a card (checks the required fields first)."""
    missing = [k for k in REQUIRED_FIELDS if k not in card]
    if missing:
        raise CardError(f"model card lacks {', '.join(missing)}")
    return json.dumps(card, sort_keys=True)


def metric_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of ``metrics.json`` that goes into a card."""
    return {k: metrics[k] for k in METRIC_SUMMARY_KEYS if k in metrics}
