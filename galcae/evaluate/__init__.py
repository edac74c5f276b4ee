"""Evaluation of a trained run: the paper's Section 4 (R², PCA, controlled sets, traversals).

Needs the ``evaluate`` extra (matplotlib for the figures, scikit-learn for PCA and R²).
"""

from ..errors import require

for _module in ("matplotlib", "sklearn"):
    require(_module, "evaluate", "galcae evaluate")

from .evaluation import evaluate_run  # noqa: E402  (after the check, which names the extra)

__all__ = ["evaluate_run"]
