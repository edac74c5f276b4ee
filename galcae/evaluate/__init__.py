"""Evaluation of a trained run: the paper's Section 4 (R², PCA, controlled sets, traversals)."""

from .evaluation import evaluate_run

__all__ = ["evaluate_run"]
