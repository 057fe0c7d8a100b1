"""The dependency direction of DESIGN.md: models/ and dashboard/ never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_of(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.name == "__main__" or "views" in rel.parts or rel.name == "app":
            continue  # scripts: imported by their runner, checked by source below
        names.append(".".join(rel.parts).removesuffix(".__init__"))
    return names


@pytest.mark.parametrize("package", ["models", "dashboard"])
def test_package_imports_without_torch(package):
    mods = modules_of(package)
    assert mods, f"{package}/ has no modules"
    code = "import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + (
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m.startswith('training') or m.startswith('export'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {package}/ pulled in: {out.stdout.strip()}"


@pytest.mark.parametrize("package", ["models", "dashboard"])
def test_no_torch_import_in_source(package):
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*.py")
        for line in p.read_text().splitlines()
        if line.strip().startswith(("import torch", "from torch", "from training", "import training", "from export", "import export"))
    ]
    assert offenders == []
