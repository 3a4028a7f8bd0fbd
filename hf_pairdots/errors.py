"""The named errors of hf_pairdots, under one base class.

Catch :class:`PairDotsError` for any of them. Each error also keeps the built-in base it had
before it moved here (``RuntimeError``, or ``ValueError`` for a bad damping), so ``except
RuntimeError`` / ``except ValueError`` go on working, and each stays importable from the module
that raises it (``hf_pairdots.saliency.SaliencyError``,
...). Bad arguments are ``ValueError``/``TypeError`` as usual, not listed here; every message
names the option to change and how.

- :class:`SaliencyError` (:mod:`hf_pairdots.saliency`): no embedding block to take ∂S/∂e at;
- :class:`LissaDivergenceError` (:mod:`hf_pairdots.ihvp`): the LiSSA recursion diverged;
- :class:`IndefiniteHessianError` (:mod:`hf_pairdots.ihvp`): H + λI is not positive definite;
- :class:`WordNetUnavailable` (:mod:`hf_pairdots.augment.lexicon`): nltk's WordNet is missing;
- :class:`HubUnavailable` (:mod:`hf_pairdots.hub`): the Hugging Face Hub cannot be reached;
- :class:`IncompatibleRunError`: an output folder holds records made with other options;
- :class:`TokenizationError` (:mod:`hf_pairdots.text`): the tokenizer's ids for a text's words
  cannot be made equal to its ids for the raw text;
- :class:`UnsupportedModelError` (:mod:`hf_pairdots.modeling`): the model's layout or head is one
  this package cannot explain faithfully.
"""

from __future__ import annotations

__all__ = [
    "HubUnavailable",
    "IncompatibleRunError",
    "IndefiniteHessianError",
    "LissaDivergenceError",
    "PairDotsError",
    "SaliencyError",
    "TokenizationError",
    "UnsupportedModelError",
    "WordNetUnavailable",
]


class PairDotsError(Exception):
    """Base class of every named hf_pairdots error."""


class SaliencyError(PairDotsError, RuntimeError):
    """Saliency cannot be computed for this model (no embedding layer could be found)."""


class LissaDivergenceError(PairDotsError, RuntimeError):
    """The LiSSA recursion grew past its bound or became non-finite; the message says whether to
    raise ``scale`` or ``damping``."""


class IndefiniteHessianError(PairDotsError, ValueError):
    """H + damping·I is not positive definite, so s_test would flip the sign of influence.

    Raised by :func:`~hf_pairdots.ihvp.check_positive_definite` for every solver, with one
    message naming ``damping`` and the value to exceed. A ``ValueError`` (the damping is a bad
    argument). Attributes: ``lambda_min`` (the smallest eigenvalue of H found, or an upper bound
    on it) and ``damping``.
    """

    def __init__(self, lambda_min: float, damping: float):
        self.lambda_min, self.damping = lambda_min, damping
        super().__init__(
            f"H + damping*I is not positive definite: H has an eigenvalue at or below {lambda_min:.3g} and "
            f"damping={damping:g} does not lift it above zero, so s_test would flip the sign of influence along "
            f"it. Set damping above {-lambda_min:.3g}, or damping=None (automatic: the Lanczos estimate of "
            "lambda_min plus a margin; raise power_iters if that estimate falls short)."
        )


class WordNetUnavailable(PairDotsError, RuntimeError):
    """WordNet for nltk is missing or unreadable; the message names the ways to get it."""


class HubUnavailable(PairDotsError, RuntimeError):
    """The Hugging Face Hub cannot be reached (offline mode or no connection); the message says
    where the complete local copy is."""


class IncompatibleRunError(PairDotsError, RuntimeError):
    """An output folder already holds records made with other options, so appending to it would
    mix two runs; the message names the options that differ and says to choose another folder
    or rerun with the saved options."""


class TokenizationError(PairDotsError, ValueError):
    """Pre-split words give other token ids than the raw text and the tokenizer gives no offsets
    to map the raw text's tokens to words; the message names the fix (a fast tokenizer, or
    ``add_prefix_space=True``)."""


class UnsupportedModelError(PairDotsError, ValueError):
    """The model cannot be explained faithfully (an unknown head, a loss this package does not
    differentiate, a parameter preset its layout lacks); the message names what is missing and
    the alternative."""
