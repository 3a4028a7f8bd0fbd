"""Embedding-gradient saliency of a test example (Sec. 3.1, Eq. 1-2) and its word aggregation.

For label y with score S_y (by default the probability, as in the paper) the token saliency is

    s(x_t) = Σ_j w_y(e_t)_j,   w_y(e_t) = ∂S_y / ∂e_t          (Eq. 2 and the sum below it)

where e_t is the token's vector **at the encoder's input**, i.e. the output of the embedding
block. (At the raw word-embedding lookup of a BERT-family model the sum is identically zero:
the block ends in LayerNorm, which ignores a constant added to every dimension.) Alternatives:
``grad_x_input`` = Σ_j e_t,j ∂S_y/∂e_t,j and ``l2`` = ||∂S_y/∂e_t||₂ (a magnitude, never negative).
``gradient`` and ``grad_x_input`` are **signed**: positive means raising the token's embedding
along the all-ones direction (resp. scaling it up) raises S_y.

Word pieces are summed into whitespace words with the tokenizer's ``word_ids``; special tokens
([CLS], [SEP], padding) have no word and are never scored. Words past the
model's maximum length are reported as not scored (``None``), not as zero, and so are
words that give no token (a zero-width space, a lone combining accent: the tokenizer's normaliser
deletes them), which are not counted as truncated. Which words are scored always comes from the
encoding's word ids (:func:`~hf_pairdots.text.scored_words`).

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .modeling import (autocast_disabled, check_labels, find_embedding_block, model_device, model_inputs,
                       sequence_length, suspend_input_require_grads)
from .text import EncodedText, encode_words

# Aliases: this plumbing moved to modeling.py (model preparation and layout) and text.py (words
# and their tokenisation); the names stay importable from here for code written before the move.
from .errors import SaliencyError  # noqa: F401
from .modeling import AUTOCAST_DEVICE_TYPES, INPUT_KEYS  # noqa: F401
from .text import (EMPTY_TEXT, NO_TOKEN_TEXT, PREFIX_WORDS, scored_words, truncated_words,  # noqa: F401
                   unscorable_texts, word_encoding)

from .constants import MODES, SALIENT_BY, TARGETS  # noqa: E402  (the choice lists live in constants.py)


class _Perturbation:
    """Forward hook that adds ``delta`` to the embedding block's output and records the output."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.delta: Tensor | None = None
        self.embeddings: Tensor | None = None

    def __enter__(self):
        self.handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.delta = self.embeddings = None

    def _hook(self, module, inputs, output):
        self.embeddings = output
        return output if self.delta is None else output + self.delta


def label_score(logits: Tensor, labels: Tensor, target: str = "prob") -> Tensor:
    """S_y per example, shape ``(B,)`` on ``logits``' device: probability (paper),
    log-probability, or logit margin. ``labels`` may live anywhere (moved to ``logits``' device)."""
    logits = logits.float()
    labels = labels.to(logits.device)
    if target == "prob":
        return logits.softmax(-1).gather(1, labels[:, None])[:, 0]
    if target == "logprob":
        return logits.log_softmax(-1).gather(1, labels[:, None])[:, 0]
    if target == "margin":
        own = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(-1)
        return own - others
    raise ValueError(f"target={target!r}: use one of {TARGETS}")


def embedding_gradient(model: nn.Module, batch: dict, labels: Tensor, *, target: str = "prob",
                       params: dict[str, Tensor] | None = None, block: nn.Module | None = None):
    """w_y(e) = ∂S_y/∂e for every token of a batch (Eq. 2), functionally in ``params``.

    Args:
        model: classifier in eval mode.
        batch: tokenised inputs, tensors of shape ``(B, L)``, on any device (moved to the
            model's device).
        labels: ``(B,)`` label y per example, on any device.
        target: S_y, see :func:`label_score`.
        params: optional ``{name: tensor}`` replacing model parameters (``torch.func`` style), so
            the result can be differentiated again with respect to them (Eq. 5).
        block: the embedding block (default :func:`~hf_pairdots.modeling.find_embedding_block`).

    Returns:
        ``(grad, embeddings, scores)``: ``(B, L, H)`` gradient, ``(B, L, H)`` embeddings e,
        ``(B,)`` S_y, all on the model's device. Examples are independent (eval mode), so one
        backward serves the batch.
    """
    block = block or find_embedding_block(model)
    device = model_device(model)
    inputs = model_inputs(batch, device)
    labels = labels.to(device)

    def total_score(delta):
        perturb.delta = delta
        logits = torch.func.functional_call(model, params or {}, args=(), kwargs=inputs, strict=False).logits
        scores = label_score(logits, labels, target)
        return scores.sum(), (scores, perturb.embeddings)

    with _Perturbation(block) as perturb, suspend_input_require_grads(model):
        zeros = torch.zeros((*labels.shape, sequence_length(inputs), _embedding_dim(model)), device=device)
        grad, (scores, embeddings) = torch.func.grad(total_score, has_aux=True)(zeros)
    return grad, embeddings, scores


def _embedding_dim(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "embedding_size", None) or config.hidden_size


def token_saliency(grad: Tensor, embeddings: Tensor, mode: str = "gradient") -> Tensor:
    """Reduce ``(..., L, H)`` embedding gradients to ``(..., L)`` token scores.

    ``gradient``: Σ_j ∂S_y/∂e_t,j (the paper); ``grad_x_input``: Σ_j e_t,j ∂S_y/∂e_t,j;
    ``l2``: ||∂S_y/∂e_t||₂. Units: change of S_y per unit change of the embedding. The two
    linear reductions are ``∂S_y/∂e_t · d_t`` with ``d_t`` from :func:`saliency_direction`.
    """
    if mode == "l2":
        return grad.norm(dim=-1)
    return (grad * saliency_direction(mode, embeddings)).sum(-1)


def saliency_direction(mode: str, embeddings: Tensor) -> Tensor:
    """The direction d_t of a linear saliency reduction, s(x_t) = ∂S_y/∂e_t · d_t: the all-ones
    vector (``"gradient"``, shape ``(1,)`` broadcast over ``embeddings``) or e_t itself
    (``"grad_x_input"``). The one definition of both, shared by :func:`token_saliency`
    and the Jacobian-vector route of :meth:`~hf_pairdots.loss.CachedTopLoss.saliency_gradients`.

    Raises:
        ValueError: ``mode`` is not linear in ∂S_y/∂e (``"l2"``) or unknown.
    """
    if mode == "gradient":
        return embeddings.new_ones(1)
    if mode == "grad_x_input":
        return embeddings
    raise ValueError(f"mode={mode!r} has no saliency direction: use one of {LINEAR_MODES}" if mode in MODES
                     else f"mode={mode!r}: use one of {MODES}")


LINEAR_MODES = ("gradient", "grad_x_input")
"""The reductions that are linear in ∂S_y/∂e (:func:`saliency_direction`)."""


def word_scores(token_scores: Sequence[float], word_ids: Sequence[int | None], num_words: int) -> list[float | None]:
    """Sum word-piece scores into whitespace words.

    Args:
        token_scores: one score per token position.
        word_ids: the tokenizer's ``word_ids()`` for the same positions (``None`` for special
            tokens and padding, which are dropped).
        num_words: number of whitespace words of the text.

    Returns:
        One entry per word; ``None`` for words that have no token (cut off by truncation, or
        deleted by the tokenizer's normaliser).
    """
    scores: list[float | None] = [None] * num_words
    for score, w in zip(token_scores, word_ids):
        if w is not None:
            scores[w] = float(score) + (scores[w] or 0.0)
    return scores


@dataclass
class WordSaliency:
    """Saliency of one text for one label.

    Attributes:
        words: the text's whitespace words.
        scores: one score per word (``None`` = not scored: past the maximum length, or no token).
        label: the label y.
        probability: S_y as a probability, reported next to every saliency.
    """

    words: list[str]
    scores: list[float | None]
    label: int
    probability: float

    @property
    def most_salient(self) -> int:
        """Index of the word with the largest signed score, as the paper ranks tokens (Sec. 3.1).

        A signed score is evidence *for* the label: for two labels of a binary task it is the
        opposite of the other label's score, so the two explained labels point at the words
        pushing each way. Special tokens and unscored words never count.
        """
        return self.rank("value")[0]

    def rank(self, by: str = "value") -> list[int]:
        """Scored word indices, most salient first, by signed ``"value"`` or by ``"magnitude"``.

        Raises:
            ValueError: no word was scored, or ``by`` is unknown.
        """
        if by not in SALIENT_BY:
            raise ValueError(f"by={by!r}: use 'value' (the paper) or 'magnitude'")
        scored = [i for i, s in enumerate(self.scores) if s is not None]
        if not scored:
            raise ValueError("no word of this text was scored")
        key = (lambda i: abs(self.scores[i])) if by == "magnitude" else (lambda i: self.scores[i])
        return sorted(scored, key=key, reverse=True)


@autocast_disabled()
def saliency(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
             mode: str = "gradient", target: str = "prob", max_length: int | None = None) -> list[WordSaliency]:
    """Word saliency of each text for its label (Sec. 3.1).

    Args:
        model: classifier in eval mode, float32 (the passes run in float32 even inside a caller's
            ``torch.autocast`` region: :func:`~hf_pairdots.modeling.autocast_disabled`).
        tokenizer: its tokenizer.
        texts: the texts; whitespace defines the words.
        labels: the label y to explain for each text.
        mode, target: see :func:`token_saliency` and :func:`label_score`.
        max_length: truncation length in tokens (default: the model's maximum).

    Returns:
        One :class:`WordSaliency` per text (Python floats). The passes run on the model's device.
        Cost: one forward and one backward pass per batch (plus one forward pass for the
        probabilities when ``target`` is not ``"prob"``).
    """
    if max_length is None:  # the model's maximum, which may be below the tokenizer's
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        max_length = min(tokenizer.model_max_length, 512, positions or 512)
    enc, words, _ = encode_words(tokenizer, texts, max_length)
    return _word_saliencies(model, dict(enc), [enc.word_ids(i) for i in range(len(words))], words, labels,
                            mode, target)


@autocast_disabled()
def text_saliency(model: nn.Module, encoded: EncodedText, labels: Sequence[int], *, mode: str = "gradient",
                  target: str = "prob") -> list[WordSaliency]:
    """Word saliency of one already tokenised text for each of ``labels`` (Sec. 3.1): what
    :func:`saliency` gives for ``[encoded.text] * len(labels)``, without tokenising again.

    Cost: one forward and one backward pass over ``len(labels)`` copies of the text (plus one
    forward pass for the probabilities when ``target`` is not ``"prob"``).
    """
    k = len(labels)
    return _word_saliencies(model, encoded.inputs(k), [encoded.word_ids] * k, [encoded.words] * k, labels,
                            mode, target)


def _word_saliencies(model, batch: dict, word_ids, words, labels, mode: str, target: str) -> list[WordSaliency]:
    y = torch.as_tensor(list(labels))
    check_labels(model, y)
    grad, emb, scores = embedding_gradient(model, batch, y, target=target)
    per_token = token_saliency(grad, emb, mode).detach().cpu()
    probs = scores.detach().cpu() if target == "prob" else label_score(_logits_no_grad(model, batch), y, "prob").cpu()
    return [WordSaliency(list(w), word_scores(per_token[i].tolist(), word_ids[i], len(w)), int(y[i]), float(probs[i]))
            for i, w in enumerate(words)]


def _logits_no_grad(model: nn.Module, batch: dict) -> Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch, model_device(model))).logits
