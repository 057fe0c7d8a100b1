"""The data layer, as training sees it.

The collection reader itself (EyePACS, APTOS, any CSV, ImageFolder; splits; validation) is
torch-free and lives in :mod:`models.data`, because the dashboard's Data page reads
collections too and must not import training. This module is the training-side name for it.
"""

from models.data import (  # noqa: F401  (re-exported)
    DR_GRADE_NAMES,
    Collection,
    DataError,
    check_collection,
    load_collection,
)
