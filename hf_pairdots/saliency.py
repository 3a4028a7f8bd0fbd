"""Embedding-gradient saliency of a test example (Sec. 3.1, Eq. 1-2) and its word aggregation.

For label y with score S_y (by default the probability, as in the paper) the token saliency is

    s(x_t) = Σ_j w_y(e_t)_j,   w_y(e_t) = ∂S_y / ∂e_t          (Eq. 2 and the sum below it)

where e_t is the token's vector **at the encoder's input**, i.e. the output of the embedding
block. (At the raw word-embedding lookup of a BERT-family model the sum is identically zero:
the block ends in LayerNorm, which ignores a constant added to every dimension.) Alternatives:
``grad_x_input`` = Σ_j e_t,j ∂S_y/∂e_t,j and ``l2`` = ||∂S_y/∂e_t||₂ (a magnitude, never negative).
``gradient`` and ``grad_x_input`` are **signed**: positive means raising the token's embedding
along the all-ones direction (resp. scaling it up) raises S_y (case C16).

Word pieces are summed into whitespace words with the tokenizer's ``word_ids``; special tokens
([CLS], [SEP], padding) have no word and are never scored (cases C17, C18). Words past the
model's maximum length are reported as not scored (``None``), not as zero (case C20), and so are
words that give no token (a zero-width space, a lone combining accent: the tokenizer's normaliser
deletes them), which are not counted as truncated. Which words are scored always comes from the
encoding's word ids (:func:`scored_words`).

Devices: the tokenizer builds its tensors on the CPU; :func:`model_inputs` moves them to the
model's device (:func:`model_device`) right before the forward pass, and the gradients of
:func:`embedding_gradient` live there too. What :func:`saliency` returns is plain Python
(floats and lists), read back to the CPU once per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import SaliencyError

MODES = ("gradient", "grad_x_input", "l2")
TARGETS = ("prob", "logprob", "margin")


def find_embedding_block(model: nn.Module, module_name: str | None = None) -> nn.Module:
    """The module whose output is the encoder's input (where e_t lives).

    Looks for, in order: ``module_name`` (a dotted name) if given; ``<base model>.embeddings``
    (BERT, RoBERTa, ELECTRA, DistilBERT, ...); ``model.get_input_embeddings()``; the first
    ``nn.Embedding``.

    Raises:
        SaliencyError: none of these exists (case C14).
    """
    if module_name is not None:
        return model.get_submodule(module_name)
    base = getattr(model, "get_base_model", lambda: model)()
    base = getattr(base, getattr(base, "base_model_prefix", ""), base)
    block = getattr(base, "embeddings", None)
    if isinstance(block, nn.Module):
        return block
    getter = getattr(model, "get_input_embeddings", None)
    found = getter() if callable(getter) else None
    if found is None:
        found = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if found is None:
        raise SaliencyError(
            f"{type(model).__name__} has no embedding block (`<base model>.embeddings`), no "
            "get_input_embeddings() and no nn.Embedding: saliency is impossible; give "
            "find_embedding_block(model, module_name='<dotted name>') the module to use"
        )
    return found


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


@contextlib.contextmanager
def suspend_input_require_grads(model: nn.Module):
    """Detach, while the block runs, the hooks of ``transformers``' ``enable_input_require_grads``.

    ``gradient_checkpointing_enable()`` (and peft) hook the input embeddings with
    ``output.requires_grad_(True)``, which ``torch.func`` transforms reject: saliency, Eq. 5 and
    every HVP through the embeddings would fail on such a model (case C13). The hooks are put
    back afterwards, in their original order. Checkpointing itself is inactive in eval mode.
    """
    removed, orders = [], {}
    for module in model.modules():
        for handle in getattr(module, "_require_grads_hooks", None) or []:
            hooks = handle.hooks_dict_ref()
            if hooks is not None and handle.id in hooks:
                orders.setdefault(id(hooks), (hooks, list(hooks)))
                removed.append((hooks, handle.id, hooks.pop(handle.id)))
    try:
        yield model
    finally:
        for hooks, key, fn in removed:
            hooks[key] = fn
        for hooks, order in orders.values():
            items = dict(hooks)
            hooks.clear()
            hooks.update({k: items[k] for k in order if k in items})
            hooks.update({k: v for k, v in items.items() if k not in hooks})


AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "maia", "privateuseone")
"""Every device type ``torch.autocast`` accepts: :func:`autocast_disabled` leaves each one's region."""


@contextlib.contextmanager
def autocast_disabled():
    """Leave every active ``torch.autocast`` region while the block runs: float32 maths inside.

    A caller's mixed-precision region (an evaluation loop under ``torch.autocast("cuda",
    torch.bfloat16)``, a CPU bf16 script) would otherwise run saliency, ∇θ m, the HVPs and the
    scores in reduced precision without a word (CPU bf16 on a tiny BERT: influence scores 1.3 %
    and saliencies 0.7 % off).
    Each device type whose autocast is on (:data:`AUTOCAST_DEVICE_TYPES`, whatever the model's
    device) gets ``torch.autocast(device_type, enabled=False)``; the caller's state comes back on
    exit. Usable as a decorator (``@autocast_disabled()``). Cost: none.
    """
    with contextlib.ExitStack() as stack:
        for device_type in AUTOCAST_DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


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


INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")
"""Keys of a tokenised batch that a classifier's forward takes."""


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``: that of its first parameter (else its first buffer, else CPU).

    Every tensor this package feeds to the model, or combines with its parameters, is put on
    this device. Models spread over several devices (``device_map="auto"``) are not supported:
    influence needs θ_S and the inputs on one device.
    """
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_inputs(batch: dict, device: torch.device | str | None = None) -> dict:
    """The keys of a tokenised batch that the model's forward takes (labels dropped).

    ``device``: move those tensors there (typically ``model_device(model)``; tokenizers build
    them on the CPU). ``None`` keeps them where they are. Moving is a no-op for a tensor already
    on ``device``.
    """
    chosen = {k: v for k, v in batch.items() if k in INPUT_KEYS}
    if device is None:
        return chosen
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in chosen.items()}


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
        block: the embedding block (default :func:`find_embedding_block`).

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
        zeros = torch.zeros((*labels.shape, _sequence_length(inputs), _embedding_dim(model)), device=device)
        grad, (scores, embeddings) = torch.func.grad(total_score, has_aux=True)(zeros)
    return grad, embeddings, scores


def _sequence_length(inputs: dict) -> int:
    key = "input_ids" if "input_ids" in inputs else "inputs_embeds"
    return inputs[key].shape[1]


def _embedding_dim(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "embedding_size", None) or config.hidden_size


def token_saliency(grad: Tensor, embeddings: Tensor, mode: str = "gradient") -> Tensor:
    """Reduce ``(..., L, H)`` embedding gradients to ``(..., L)`` token scores.

    ``gradient``: Σ_j ∂S_y/∂e_t,j (the paper); ``grad_x_input``: Σ_j e_t,j ∂S_y/∂e_t,j;
    ``l2``: ||∂S_y/∂e_t||₂. Units: change of S_y per unit change of the embedding.
    """
    if mode == "gradient":
        return grad.sum(-1)
    if mode == "grad_x_input":
        return (grad * embeddings).sum(-1)
    if mode == "l2":
        return grad.norm(dim=-1)
    raise ValueError(f"mode={mode!r}: use one of {MODES}")


def word_scores(token_scores: Sequence[float], word_ids: Sequence[int | None], num_words: int) -> list[float | None]:
    """Sum word-piece scores into whitespace words (case C18).

    Args:
        token_scores: one score per token position.
        word_ids: the tokenizer's ``word_ids()`` for the same positions (``None`` for special
            tokens and padding, which are dropped: case C17).
        num_words: number of whitespace words of the text.

    Returns:
        One entry per word; ``None`` for words that have no token (cut off by truncation, C20, or
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
        if by not in ("value", "magnitude"):
            raise ValueError(f"by={by!r}: use 'value' (the paper) or 'magnitude'")
        scored = [i for i, s in enumerate(self.scores) if s is not None]
        if not scored:
            raise ValueError("no word of this text was scored")
        key = (lambda i: abs(self.scores[i])) if by == "magnitude" else (lambda i: self.scores[i])
        return sorted(scored, key=key, reverse=True)


EMPTY_TEXT = "empty or whitespace-only text"
NO_TOKEN_TEXT = "no token: the tokenizer's normaliser deletes every character"
"""Reasons, in skipped-row lists, why nothing of a text can be scored."""


def encode_words(tokenizer, texts: Sequence[str], max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, rows: Sequence[int] | None = None):
    """Tokenise whitespace-split texts so that ``word_ids`` index the whitespace words.

    ``pad_to_multiple_of``: pad the batch's length up to a multiple (fewer distinct shapes); left
    out when ``max_length`` is not itself a multiple (the tokenizer refuses that combination).
    ``rows``: the caller's row index of each text (default ``0..len(texts)-1``), named in errors.

    Which words are scored is read from the encoding (:func:`scored_words`), never from a count:
    a word the tokenizer's normaliser deletes entirely (a zero-width space, a lone combining
    accent) has no token anywhere, so it is not scored, but it is not truncated either.

    Returns:
        ``(encoding, words, truncated)``: a padded ``BatchEncoding`` of CPU torch tensors (pass
        it through ``model_inputs(dict(encoding), model_device(model))`` before a forward), the
        word lists, and per text the number of words lost to truncation (words past the last one
        in the encoding that give a token; see :func:`truncated_words`). Cost: one tokenisation,
        plus one of the trailing words of truncated texts (:func:`word_encoding` skips that).

    Raises:
        ValueError: a text is empty or whitespace only (naming its row).
    """
    enc, words = word_encoding(tokenizer, texts, max_length, pad_to_multiple_of, rows)
    return enc, words, truncated_words(tokenizer, words, [enc.word_ids(i) for i in range(len(words))])


def word_encoding(tokenizer, texts: Sequence[str], max_length: int | None = None,
                  pad_to_multiple_of: int | None = None, rows: Sequence[int] | None = None):
    """``(encoding, words)`` of :func:`encode_words` (same arguments and errors), without the
    truncation count: for callers that only feed the encoding to the model."""
    words = [t.split() for t in texts]
    for i, w in enumerate(words):
        if not w:
            raise ValueError(f"text {i if rows is None else rows[i]} is empty or whitespace only: nothing to "
                             "score (leave the row out)")
    max_length = max_length or min(tokenizer.model_max_length, 512)
    if pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
        pad_to_multiple_of = None
    extra = {} if pad_to_multiple_of is None else {"pad_to_multiple_of": pad_to_multiple_of}
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    padding=True, return_tensors="pt", **extra)
    return enc, words


def scored_words(encoding, i: int = 0) -> list[int]:
    """Sorted indices of the whitespace words of text ``i`` that have a token in ``encoding``:
    the words saliency and Eq. 8 score. A word past ``max_length`` has none, nor has a word the
    tokenizer's normaliser deletes."""
    return _words_of(encoding.word_ids(i))


def _words_of(word_ids: Sequence[int | None]) -> list[int]:
    return sorted({w for w in word_ids if w is not None})


def truncated_words(tokenizer, words: Sequence[Sequence[str]], word_ids: Sequence[Sequence[int | None]]) -> list[int]:
    """Per text, the words cut off by truncation: those after the last word that has a token in
    the encoding (``word_ids``, one list per text) and that would give a token. Words that give
    no token at all are not counted. Cost: one more tokenisation of those trailing words (none
    for a text that fits)."""
    tails = {}
    for i, (w, ids) in enumerate(zip(words, word_ids)):
        kept = _words_of(ids)
        tail = list(w[kept[-1] + 1:] if kept else w)
        if tail:
            tails[i] = tail
    out = [0] * len(words)
    if tails:
        enc = tokenizer(list(tails.values()), is_split_into_words=True, add_special_tokens=False, verbose=False)
        for j, i in enumerate(tails):
            out[i] = len(scored_words(enc, j))
    return out


PREFIX_WORDS = 8
"""Words of each text that :func:`unscorable_texts` tokenises first."""


def unscorable_texts(tokenizer, texts: Sequence[str], max_length: int | None = None) -> dict[int, str]:
    """``{position: reason}``, sorted, of the texts in which no word can be scored: empty or
    whitespace only (:data:`EMPTY_TEXT`), every word deleted by the tokenizer's normaliser
    (:data:`NO_TOKEN_TEXT`), or no room for a word within ``max_length``. The model would see
    only special tokens.

    Cost: one tokenisation of the first :data:`PREFIX_WORDS` words of each text (no padding;
    the words before the first one that gives a token give none, so that word's first piece
    lies right after the leading special tokens), and of the whole text when none of those
    words gives a token. No model call.
    """
    out = {i: EMPTY_TEXT for i, t in enumerate(texts) if not t.split()}
    rest = [i for i in range(len(texts)) if i not in out]
    max_length = max_length or min(tokenizer.model_max_length, 512)
    for length in (PREFIX_WORDS, None):  # None: the whole text, for those whose prefix gave nothing
        if not rest:
            break
        words = [texts[i].split()[:length] for i in rest]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        rest = [i for j, i in enumerate(rest) if not scored_words(enc, j)]
    if rest:
        cuts = truncated_words(tokenizer, [texts[i].split() for i in rest], [[] for _ in rest])
        for i, cut in zip(rest, cuts):
            out[i] = f"max_length={max_length} leaves no room for a word" if cut else NO_TOKEN_TEXT
    return dict(sorted(out.items()))


@autocast_disabled()
def saliency(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
             mode: str = "gradient", target: str = "prob", max_length: int | None = None) -> list[WordSaliency]:
    """Word saliency of each text for its label (Sec. 3.1).

    Args:
        model: classifier in eval mode, float32 (the passes run in float32 even inside a caller's
            ``torch.autocast`` region: :func:`autocast_disabled`).
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
    if max_length is None:  # the model's maximum, which may be below the tokenizer's (case C20)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        max_length = min(tokenizer.model_max_length, 512, positions or 512)
    enc, words, _ = encode_words(tokenizer, texts, max_length)
    y = torch.as_tensor(list(labels))
    _check_labels(model, y)
    grad, emb, scores = embedding_gradient(model, dict(enc), y, target=target)
    per_token = token_saliency(grad, emb, mode).detach().cpu()
    probs = scores.detach().cpu() if target == "prob" else label_score(_logits_no_grad(model, enc), y, "prob").cpu()
    return [
        WordSaliency(w, word_scores(per_token[i].tolist(), enc.word_ids(i), len(w)), int(y[i]), float(probs[i]))
        for i, w in enumerate(words)
    ]


def _logits_no_grad(model: nn.Module, enc) -> Tensor:
    with torch.no_grad():
        return model(**model_inputs(dict(enc), model_device(model))).logits


def _check_labels(model: nn.Module, labels: Tensor, rows: Sequence[int] | None = None) -> None:
    """ValueError naming the labels outside the model's, and with ``rows`` (the caller's row
    index of each label) their rows."""
    k = model.config.num_labels
    bad = [i for i, v in enumerate(labels) if not 0 <= int(v) < k]
    if bad:
        where = "" if rows is None else f" of rows {[rows[i] for i in bad]}"
        raise ValueError(f"labels {[int(labels[i]) for i in bad]}{where} are outside the model's {k} labels "
                         f"(0..{k - 1})")
