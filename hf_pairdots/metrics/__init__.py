"""``evaluate`` metric scripts kept in the repo, loaded by path so that no Hub access is needed."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_accuracy() -> evaluate.EvaluationModule:
    """The accuracy metric of ``metrics/accuracy/accuracy.py`` (works offline).

    Returns:
        ``evaluate.EvaluationModule``; ``.compute(predictions=..., references=...)`` returns
        ``{"accuracy": float}``.
    """
    return evaluate.load(str(METRICS_DIR / "accuracy"))
