"""The international DR severity scale, in one place (names, referable cut-off).

Cheap to import (numpy only): the data layer, the metrics, the grading runtime and the
dashboard all take the grade names and the referable-DR rule from here.
"""

from __future__ import annotations

import numpy as np

#: ICDR grades 0-4 (Wilkinson et al. 2003), the labels of EyePACS and APTOS.
DR_GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")

#: Referable DR: moderate non-proliferative DR or worse (grade >= 2) is sent to an ophthalmologist.
REFERABLE_GRADE = 2


def referable_score(probs: np.ndarray) -> np.ndarray:
    """P(grade >= 2) per row of a (N, 5) probability matrix: the referable-DR score.

    Examples
    --------
    >>> referable_score(np.array([[0.5, 0.2, 0.1, 0.1, 0.1]])).round(6).tolist()
    [0.3]
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(DR_GRADE_NAMES):
        raise ValueError(f"referable DR needs probabilities over the {len(DR_GRADE_NAMES)}-grade DR scale, got shape {p.shape}")
    return p[:, REFERABLE_GRADE:].sum(axis=1)
