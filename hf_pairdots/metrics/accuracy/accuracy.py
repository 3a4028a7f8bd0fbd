"""Accuracy as an ``evaluate`` metric script, kept in the repo so it loads offline by path.

Same inputs and output as the Hub's ``accuracy`` metric (single-label case), our own code:
accuracy = Σ_i w_i [prediction_i == reference_i] / Σ_i w_i, with w_i = 1 unless ``sample_weight``
is given; ``normalize=False`` returns the (weighted) number of correct predictions instead.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of predictions equal to the reference labels."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): gold labels.
    normalize (bool): return the fraction correct (default) or, if False, the count correct.
    sample_weight (list of float): optional weight per example.
Returns:
    accuracy (float): in [0, 1] if normalize, else the (weighted) count of correct predictions.
Examples:
    >>> accuracy = evaluate.load("hf_pairdots/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weight = (
            np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, float)
        )
        total = float(np.sum(weight * correct))
        return {"accuracy": total / float(np.sum(weight)) if normalize else total}
