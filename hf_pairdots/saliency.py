"""Embedding-gradient saliency of a test example (Sec. 3.1, Eq. 1-2) and its word aggregation.

For label y with score S_y (by default the probability, as in the paper) the token saliency is

    s(x_t) = Σ_j w_y(e_t)_j,   w_y(e_t) = ∂S_y / ∂e_t          (Eq. 2 and the sum below it)

where e_t is the token's vector **at the encoder's input**, i.e. the output of the embedding
block. (At the raw word-embedding lookup of a BERT-family model the sum is identically zero:
the block ends in LayerNorm, which ignores a constant added to every dimension.) Alternatives:
``grad_x_input`` = Σ_j e_t,j ∂S_y/∂e_t,j and ``l2`` = ||∂S_y/∂e_t||₂ (a magnitude, never negative).
``gradient`` and ``grad_x_input`` are **signed**: positive means raising the token's embedding
along the all-ones direction (resp. scaling it up) raises S_y.

``occlusion`` takes no gradient: s(x_t) = S_y(x) - S_y(x̃_t), the drop of S_y when every word piece
of word t is replaced by the eraser of Eq. 8 (:func:`~hf_pairdots.erasure.erased_inputs`: UNK by
default), signed like the others (positive: the word's presence raises S_y). It is Eq. 8's
erasure applied to the test text's score instead of to the influence; as a measurement of Eq. 5,
∇θ m = ∇θ S_y(x) - ∇θ S_y(x̃_t) (:func:`~hf_pairdots.measurement.occlusion_measurement_gradient`).
On SST-2 it picks polar words far more often than the gradient reductions (``benchmarks/RESULTS.md``).

Word pieces are summed into whitespace words with the tokenizer's ``word_ids``; special tokens
([CLS], [SEP], padding) have no word and are never scored. Words past the
model's maximum length are reported as not scored (``None``), not as zero, and so are
words that give no token (a zero-width space, a lone combining accent: the tokenizer's normaliser
deletes them), which are not counted as truncated. Which words are scored always comes from the
encoding's word ids (:func:`~hf_pairdots.text.scored_words`).

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modeling import (MULTI_LABEL, REGRESSION, SINGLE_LABEL, autocast_disabled, check_outputs, find_embedding_block,
                       eval_eager_mode, model_device, model_inputs, prepare_model, problem_type, sequence_length,
                       suspend_input_require_grads)
from .erasure import erased_inputs, eraser_token
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


def label_score(logits: Tensor, labels: Tensor, target: str = "prob", problem: str = SINGLE_LABEL) -> Tensor:
    """S_y per example, shape ``(B,)`` on ``logits``' device. ``labels`` ``(B,)``: the label y
    (an output index) per example, on any device (moved to ``logits``' device).

    ``problem`` (the model's ``config.problem_type``, :func:`~hf_pairdots.modeling.problem_type`):

    * ``"single_label_classification"``: the softmax probability of y (paper), its log, or the
      logit margin of y over the best other label;
    * ``"multi_label_classification"``: the labels are independent, so the sigmoid probability
      of y, its log (``logsigmoid``), or the logit of y itself (the margin over "not y");
    * ``"regression"``: the predicted value of output y, for every ``target`` (a softmax over a
      regression output has no meaning).
    """
    logits = logits.float()
    labels = labels.to(logits.device).long()
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: use one of {TARGETS}")
    own = logits.gather(1, labels[:, None])[:, 0]
    if problem == REGRESSION:
        return own
    if problem == MULTI_LABEL:
        return {"prob": torch.sigmoid, "logprob": F.logsigmoid, "margin": lambda x: x}[target](own)
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
    problem = problem_type(model)

    def total_score(delta):
        perturb.delta = delta
        logits = torch.func.functional_call(model, params or {}, args=(), kwargs=inputs, strict=False).logits
        scores = label_score(logits, labels, target, problem)
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


DEGENERATE_RATIO = 1e-4
""":func:`degenerate_gradient_sum`'s threshold on |Σ_j g_t,j| / ||g_t||₂ (about 1 for a generic
gradient, about 1e-7·√H for one that sums to zero up to float32 round-off)."""


def degenerate_gradient_sum(grad: Tensor, attention_mask: Tensor | None = None) -> bool:
    """Whether Σ_j ∂S_y/∂e_t,j (``mode="gradient"``) is zero up to round-off for every token of a
    batch: max_t |Σ_j g_t,j| < :data:`DEGENERATE_RATIO` · max_t ||g_t||₂ over the real tokens
    (``attention_mask`` ``(B, L)``, on any device; all tokens without it). ``grad``: ``(B, L, H)``.

    This is structural, not a property of the text: when every module reading e (the first
    layer's norm and, through the residual stream, every later one and the final one) is a
    LayerNorm, as in pre-LayerNorm models (GPT-2), the gradient at e is orthogonal to the all-ones
    direction, because a LayerNorm ignores a constant added to all dimensions. A batch whose
    gradient is exactly zero (saturated S_y) is not degenerate in this sense (``False``)."""
    sums, norms = grad.detach().sum(-1).abs(), grad.detach().norm(dim=-1)
    if attention_mask is not None:  # padding counts as 0 (masks, not boolean indexing: no data-dependent shape)
        keep = attention_mask.to(grad.device, grad.dtype)
        sums, norms = sums * keep, norms * keep
    largest = float(norms.max()) if norms.numel() else 0.0
    return largest > 0 and float(sums.max()) < DEGENERATE_RATIO * largest


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
        mode: the reduction used (:func:`token_saliency`): the one asked for, or
            ``"grad_x_input"`` when ``"gradient"`` was degenerate (:func:`degenerate_gradient_sum`);
            a measurement of Eq. 5 must use the same.
    """

    words: list[str]
    scores: list[float | None]
    label: int
    probability: float
    mode: str = "gradient"

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
             mode: str = "gradient", target: str = "prob", max_length: int | None = None,
             eraser: str = "unk") -> list[WordSaliency]:
    """Word saliency of each text for its label (Sec. 3.1).

    Args:
        model: the classifier, prepared here (:func:`~hf_pairdots.modeling.prepare_model`):
            unwrapped (DDP, accelerate, ``torch.compile``), a float32 copy of fp16/bf16 weights,
            eval mode and eager attention during the call (the model's own afterwards), float32
            even inside a caller's ``torch.autocast`` region.
        tokenizer: its tokenizer.
        texts: the texts; whitespace defines the words.
        labels: the label y to explain for each text (an output index: for a regression model 0,
            or the output to explain).
        mode, target: see :func:`token_saliency` and :func:`label_score` (which follows the
            model's ``config.problem_type``: softmax, sigmoid or the predicted value).
        max_length: truncation length in tokens (default: the model's maximum).
        eraser: the eraser of ``mode="occlusion"`` (``"unk"``, ``"mask"`` or ``"zero"``:
            :mod:`~hf_pairdots.erasure`); unused by the other modes.

    Returns:
        One :class:`WordSaliency` per text (Python floats). The passes run on the model's device.
        With ``mode="gradient"`` on a model whose summed embedding gradient is identically zero
        (pre-LayerNorm, GPT-2: :func:`degenerate_gradient_sum`), a ``UserWarning`` and the scores
        of ``mode="grad_x_input"`` (recorded in :attr:`WordSaliency.mode`).
        Cost: one forward and one backward pass per batch (plus one forward pass for the
        probabilities when ``target`` is not ``"prob"``); ``"occlusion"``: one forward pass over
        W + 1 copies of each text of W scored words, no backward pass.

    Raises:
        ValueError: ``mode="occlusion"`` with an eraser the tokenizer lacks, before any pass.
    """
    model = prepare_model(model)
    with eval_eager_mode(model):
        return _saliency(model, tokenizer, texts, labels, mode, target, max_length, eraser)


def _saliency(model, tokenizer, texts, labels, mode, target, max_length, eraser) -> list[WordSaliency]:
    if max_length is None:  # the model's maximum, which may be below the tokenizer's
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        max_length = min(tokenizer.model_max_length, 512, positions or 512)
    if mode == "occlusion":
        if eraser != "zero":
            eraser_token(tokenizer, eraser)  # its error before any pass
        return [occlusion_saliency(model, encoded, [label], eraser=eraser, target=target)[0]
                for encoded, label in zip(EncodedText.encode_many(tokenizer, list(texts), max_length), labels)]
    enc, words, _ = encode_words(tokenizer, texts, max_length)
    return _word_saliencies(model, dict(enc), [enc.word_ids(i) for i in range(len(words))], words, labels,
                            mode, target)


@autocast_disabled()
def text_saliency(model: nn.Module, encoded: EncodedText, labels: Sequence[int], *, mode: str = "gradient",
                  target: str = "prob", eraser: str = "unk") -> list[WordSaliency]:
    """Word saliency of one already tokenised text for each of ``labels`` (Sec. 3.1): what
    :func:`saliency` gives for ``[encoded.text] * len(labels)``, without tokenising again. The
    model must be prepared already (float32, eval mode, eager attention, unwrapped: as the
    :class:`~hf_pairdots.explain.Explainer` holds it); :func:`saliency` prepares it itself.

    Cost: one forward and one backward pass over ``len(labels)`` copies of the text (plus one
    forward pass for the probabilities when ``target`` is not ``"prob"``); ``"occlusion"``:
    :func:`occlusion_saliency`.
    """
    if mode == "occlusion":
        return occlusion_saliency(model, encoded, labels, eraser=eraser, target=target)
    k = len(labels)
    return _word_saliencies(model, encoded.inputs(k), [encoded.word_ids] * k, [encoded.words] * k, labels,
                            mode, target)


def _word_saliencies(model, batch: dict, word_ids, words, labels, mode: str, target: str) -> list[WordSaliency]:
    y = torch.as_tensor(list(labels))
    check_outputs(model, y)
    grad, emb, scores = embedding_gradient(model, batch, y, target=target)
    if mode == "gradient" and degenerate_gradient_sum(grad, batch.get("attention_mask")):
        warnings.warn(f"{type(model).__name__}: the summed gradient Σ_j ∂S_y/∂e_t,j at the embedding block's output is "
                      "identically zero (every reader of it is a LayerNorm, as in pre-LayerNorm models such as "
                      "GPT-2), so saliency mode='gradient' would rank round-off; using mode='grad_x_input' "
                      "(Σ_j e_t,j ∂S_y/∂e_t,j) instead. Pass mode='grad_x_input' or 'l2' to silence this.",
                      UserWarning, stacklevel=3)
        mode = "grad_x_input"
    per_token = token_saliency(grad, emb, mode).detach().cpu()
    probs = (scores.detach().cpu() if target == "prob"
             else label_score(_logits_no_grad(model, batch), y, "prob", problem_type(model)).cpu())
    return [WordSaliency(list(w), word_scores(per_token[i].tolist(), word_ids[i], len(w)), int(y[i]), float(probs[i]),
                         mode)
            for i, w in enumerate(words)]


OCCLUSION_ROWS = 64
"""Erased copies per forward pass of :func:`occlusion_saliency`."""


def occlusion_saliency(model: nn.Module, encoded: EncodedText, labels: Sequence[int], *, eraser: str = "unk",
                       target: str = "prob") -> list[WordSaliency]:
    """Occlusion saliency of one tokenised text for each of ``labels``: s(x_t) = S_y(x) - S_y(x̃_t),
    x̃_t the text with every word piece of word t erased (:func:`~hf_pairdots.erasure.erased_inputs`),
    for every scored word t (unscored words: ``None``). Positive: the word's presence raises S_y.
    The model must be prepared (float32, eval mode, unwrapped). No gradient is taken, so it is never
    degenerate; it is exactly zero only for a word the model ignores.

    Cost: one forward pass over W + 1 rows (W scored words; in chunks of :data:`OCCLUSION_ROWS`),
    shared by all labels.

    Raises:
        ValueError: an eraser the tokenizer lacks (:func:`~hf_pairdots.erasure.eraser_token`).
    """
    y = torch.as_tensor(list(labels))
    check_outputs(model, y)
    inputs = model_inputs(erased_inputs(model, encoded, encoded.scored, eraser), model_device(model))
    rows = next(iter(inputs.values())).shape[0]
    with torch.no_grad():
        logits = torch.cat([model(**{key: t[start:start + OCCLUSION_ROWS] for key, t in inputs.items()}).logits.float()
                            for start in range(0, rows, OCCLUSION_ROWS)])
    problem = problem_type(model)
    out = []
    for label in y.tolist():
        score = label_score(logits, torch.full((rows,), label), target, problem).cpu()
        scores: list[float | None] = [None] * len(encoded.words)
        for j, word in enumerate(encoded.scored):
            scores[word] = float(score[0] - score[j + 1])
        probability = float(label_score(logits[:1], torch.tensor([label]), "prob", problem)[0])
        out.append(WordSaliency(list(encoded.words), scores, label, probability, "occlusion"))
    return out


def _logits_no_grad(model: nn.Module, batch: dict) -> Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch, model_device(model))).logits
