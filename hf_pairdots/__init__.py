"""hf_pairdots: Pair the Dots (Meng et al., 2020) for Hugging Face text classifiers.

Saliency of test words (Sec. 3.1), influence of training examples and of their words on that
saliency (Sec. 3.2, Eq. 4-8), and training-set edits that attack or fix a model (Sec. 4.2-4.3).

Sign convention, everywhere: I(z, m) = d m(θ_{z,ε})/dε at ε=0 = -∇θ m(θ)ᵀ H⁻¹ ∇θ L(z; θ);
positive means up-weighting z raises the measurement m.

The user API is importable from here (``from hf_pairdots import Explainer``; the names are in
``__all__``). The names are loaded on first use, so ``import hf_pairdots`` does not import torch or
transformers. Sec. 3.1's word saliency is exported as :func:`word_saliency` (it is
``hf_pairdots.saliency.saliency``; the name ``saliency`` stays the module's). The errors
(:mod:`hf_pairdots.errors`) are imported at once, so ``except hf_pairdots.PairDotsError`` costs
nothing.

Example::

    from hf_pairdots import ExplainArguments, PairDotsCallback

    PairDotsCallback.attach(trainer, dev, train_dataset=train, args=ExplainArguments(top_k=5))
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from . import errors as _errors
from .errors import *  # noqa: F403  (every named error, listed once in errors.__all__)

__version__ = "0.1.0"

_LAZY = {
    # name: (module, attribute in it)
    "ExplainArguments": ("arguments", "ExplainArguments"),
    "QueryArguments": ("arguments", "QueryArguments"),
    "MeasurementArguments": ("arguments", "MeasurementArguments"),
    "EditArguments": ("arguments", "EditArguments"),
    "SolverArguments": ("arguments", "SolverArguments"),
    "SolverOptions": ("arguments", "SolverOptions"),  # the old name of SolverArguments
    "PairDotsCallback": ("callback", "PairDotsCallback"),
    "explain_dataset": ("pipeline", "explain_dataset"),
    "select_queries": ("pipeline", "select_queries"),
    "augment_training_set": ("pipeline", "augment_training_set"),
    "apply_explanations": ("pipeline", "apply_explanations"),
    "edit_arguments": ("pipeline", "edit_arguments"),
    "AugmentedTrainingSet": ("pipeline", "AugmentedTrainingSet"),
    "Explainer": ("explain", "Explainer"),
    "Query": ("explain", "Query"),
    "Explanation": ("records", "Explanation"),
    "LabelExplanation": ("records", "LabelExplanation"),
    "TrainAttribution": ("records", "TrainAttribution"),
    "ProposedEdit": ("records", "ProposedEdit"),
    "SolveDiagnostics": ("records", "SolveDiagnostics"),
    "predict_proba": ("modeling", "predict_proba"),
    "WordSaliency": ("saliency", "WordSaliency"),
    "word_saliency": ("saliency", "saliency"),
    "load_text_classification": ("data", "load_text_classification"),
    "load_classifier": ("models", "load_classifier"),
    "load_tokenizer": ("models", "load_tokenizer"),
    "ExplanationStore": ("report", "ExplanationStore"),
    "write_report": ("report", "write_report"),
    "EditGoal": ("augment.goals", "EditGoal"),
    "GOALS": ("augment.goals", "GOALS"),
    "GOAL_GROUPS": ("augment.goals", "GOAL_GROUPS"),
    "Lexicon": ("augment.lexicon", "Lexicon"),
    "install_wordnet": ("augment.lexicon", "install_wordnet"),
    "collect_edits": ("augment.dataset", "collect_edits"),
    "apply_edits": ("augment.dataset", "apply_edits"),
    "random_baseline": ("augment.dataset", "random_baseline"),
    "CardInfo": ("hub", "CardInfo"),
    "save_augmented": ("hub", "save_augmented"),
    "push_augmented": ("hub", "push_augmented"),
    "VerifyArguments": ("verify", "VerifyArguments"),
    "verify_run": ("verify", "verify_run"),
}

__all__ = [*_LAZY, *_errors.__all__, "__version__"]


def __getattr__(name: str):
    """Import the module that defines ``name`` on first use (PEP 562) and keep the result."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what static tools see; at run time the names come from __getattr__
    from .arguments import (EditArguments, ExplainArguments, MeasurementArguments, QueryArguments, SolverArguments,
                            SolverOptions)
    from .augment.dataset import apply_edits, collect_edits, random_baseline
    from .augment.goals import GOAL_GROUPS, GOALS, EditGoal
    from .augment.lexicon import Lexicon, install_wordnet
    from .callback import PairDotsCallback
    from .data import load_text_classification
    from .explain import Explainer, Query
    from .hub import CardInfo, push_augmented, save_augmented
    from .modeling import predict_proba
    from .models import load_classifier, load_tokenizer
    from .pipeline import (
        AugmentedTrainingSet,
        apply_explanations,
        augment_training_set,
        edit_arguments,
        explain_dataset,
        select_queries,
    )
    from .records import Explanation, LabelExplanation, ProposedEdit, SolveDiagnostics, TrainAttribution
    from .report import ExplanationStore, write_report
    from .saliency import WordSaliency
    from .saliency import saliency as word_saliency
    from .verify import VerifyArguments, verify_run
