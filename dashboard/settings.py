"""Dashboard settings, read from the environment (no Streamlit, no torch).

- ``RUNS_DIR``: where the trained variants live (see :func:`models.registry.runs_dir`).
- ``DRGRADE_DATA``: the dataset folder the Data page opens first (default ``data/synth``).
- ``DRGRADE_MAX_UPLOAD_MB``: per-file upload limit of the Grade page (default 20 MB); a
  larger file gets an error card and the other files are still graded.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.registry import runs_dir

MAX_UPLOAD_ENV = "DRGRADE_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 20.0
DATA_ENV = "DRGRADE_DATA"
DEFAULT_DATA_DIR = "data/synth"

#: Scan file types the Grade and Data pages accept (Pillow reads them all).
UPLOAD_TYPES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp")

#: The commands that create runs, shown on the first-run page.
CREATE_RUNS_HELP = """\
No trained variants were found in `{root}`.

Create them with one command (trains the quick zoo on the synthetic set, then exports it):

```
make dashboard
```

or step by step:

```
python -m training.synth --out data/synth --n 2000 --size 128 --seed 0
python -m training.zoo --data data/synth --out runs --preset quick
python -m export runs/<name>
```

Point the dashboard at another folder with the `RUNS_DIR` environment variable.
"""


def max_upload_mb() -> float:
    """The per-file upload limit in MB (10**6 bytes); a bad value falls back to the default.

    Examples
    --------
    >>> os.environ[MAX_UPLOAD_ENV] = "5"; max_upload_mb()
    5.0
    >>> os.environ[MAX_UPLOAD_ENV] = "lots"; max_upload_mb()
    20.0
    >>> del os.environ[MAX_UPLOAD_ENV]
    """
    raw = os.environ.get(MAX_UPLOAD_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB
    return value if value > 0 else DEFAULT_MAX_UPLOAD_MB


def max_upload_bytes() -> int:
    return int(max_upload_mb() * 1_000_000)


def runs_root() -> Path:
    """The runs folder (``$RUNS_DIR`` or ``runs``)."""
    return runs_dir()


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
