"""The paper's influence quantities (Sec. 3.2, Eq. 4-8) as named functions.

Sign convention, in every code path::

    I(z, m) = d m(θ_{z,ε}) / dε |_{ε=0} = -∇θ m(θ)ᵀ H⁻¹ ∇θ L(z; θ)

Positive means up-weighting the training example z *raises* the measurement m; removing z
changes m by about -I/n. H is the Hessian of the mean training loss over the chosen parameters
θ_S, damped: H + λI. With ``s_test = (H + λI)⁻¹ ∇θ m`` every score is a dot product
``-s_testᵀ ∇θ L(z)``, computed as a forward-mode directional derivative of L(z) along s_test.

The parts these functions are built from live in their own modules: the training loss L(z; θ_S)
and the prepared training data in :mod:`hf_pairdots.loss`, the measurements ∇θ m in
:mod:`hf_pairdots.measurement`, the solve for s_test in :mod:`hf_pairdots.solve`.

* :func:`train_influence`: I(z_i, m) for every training example (Eq. 4/5), streamed.
* :func:`self_influence`: ∇θL(z_i)ᵀ(H + λI)⁻¹∇θL(z_i) ≥ 0 for every training example (the
  examples the model finds surprising); :func:`tail_disagreement` compares it with a loss ranking.
* :func:`example_influence`: I(z, m) for a handful of examples given as texts.
* :func:`perturbation_influence`: I(z, z̃, m) = I(z̃, m) - I(z, m) (Eq. 6-7).
* :func:`word_influence`: I(x_t, m) = I(z, m) - I(z̃(t, UNK), m) for each word (Eq. 8).

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .arguments import SolverArguments
from .loss import PreparedData, TrainLoss, loss_directional, tokenize
from .erasure import eraser_token, zeroed_word_embeddings
from .measurement import loss_measurement_gradient
from .modeling import label_tensor, model_device
from .solve import compute_s_test, resolve_damping_scale
from .text import EncodedText

# Aliases: these names moved to modeling.py, loss.py, measurement.py and solve.py and stay
# importable from here for code written before the move (the package imports them from there).
from .loss import (BLOCK_ROWS, PAD_MULTIPLE, CachedTopObjective, FullModelObjective, Objective,  # noqa: F401
                   full_hvp, make_objective, prepare_data)
from .measurement import saliency_measurement, saliency_measurement_gradient  # noqa: F401
from .modeling import eval_mode, influence_mode, unwrap_model  # noqa: F401
from .solve import CG_PASSES, choose_solver, lowrank_hessian  # noqa: F401


# ---------------------------------------------------------------------------------------------
# Training-side scores (streamed; never an n x P matrix)
# ---------------------------------------------------------------------------------------------

def train_influence(objective: TrainLoss, data: PreparedData, s_test: Tensor) -> Tensor:
    """I(z_i, m_q) for every training example (Eq. 4 chained with m; Eq. 5 for saliency).

    Args:
        s_test: ``(Q, P)``, on any device (moved to the parameters').

    Returns:
        ``(Q, n)`` influence scores in the order of the texts given to :func:`~hf_pairdots.loss.prepare_data`, on
        the CPU (accumulated on the model's device, copied once at the end).
        Cost: one forward-mode pass over the prepared data per query (vectorised over Q for the
        cached top); memory: one batch at a time.
    """
    s_test = s_test.to(objective.theta.device)
    out = torch.empty(s_test.shape[0], data.size, dtype=s_test.dtype, device=s_test.device)
    for batch in data.batches:
        with torch.no_grad():
            out[:, batch["index"].to(out.device)] = -loss_directional(objective, batch, s_test)
    return out.cpu()


# ---------------------------------------------------------------------------------------------
# Ranking of the training-side scores
# ---------------------------------------------------------------------------------------------

def gradient_norms(objective: TrainLoss, data: PreparedData, rows_per_call: int = 128) -> Tensor:
    """||∇θ L(z_i)||₂ over θ_S for every training example, ``(n,)`` on the CPU, in the order of
    the texts given to :func:`~hf_pairdots.loss.prepare_data` (the columns of
    :func:`train_influence`).

    Cost: one per-example gradient pass over the data (:func:`example_gradients`, ``rows_per_call``
    rows at a time: memory rows_per_call x P floats).
    """
    norms = torch.empty(data.size)
    for block in data.batches:
        for start in range(0, len(block["labels"]), rows_per_call):
            part = {k: v[start:start + rows_per_call] for k, v in block.items()}
            norms[part["index"]] = example_gradients(objective, part).norm(dim=1).detach().cpu()
    return norms


def rank_scores(scores: Tensor, ranking: str = "raw", norms: Tensor | None = None) -> Tensor:
    """The score by which training examples are ranked for a measurement (largest first).

    ``"raw"``: I(z_i, m) itself (Eq. 5, the paper). ``"unit"``: I(z_i, m) / ||∇θ L(z_i)||₂, the
    influence with unit-normalised training gradients (as TrackStar normalises them, Chang et al.
    2024, "Scalable influence and fact tracing for large language model pretraining"): an example
    is no longer ranked high for its large gradient alone. A zero gradient ranks as score 0.

    Args:
        scores: ``(..., n)`` I(z_i, m).
        ranking: one of :data:`~hf_pairdots.constants.RANKINGS`.
        norms: ``(n,)`` ||∇θ L(z_i)||₂ (:func:`gradient_norms`), required for ``"unit"``.

    Returns:
        ``(..., n)`` on ``scores``' device.

    Raises:
        ValueError: an unknown ranking, or ``"unit"`` without ``norms`` of shape ``(n,)``.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking={ranking!r}: use one of {RANKINGS}")
    if ranking == "raw":
        return scores
    if norms is None or norms.shape != scores.shape[-1:]:
        raise ValueError(f"ranking='unit' needs the ({scores.shape[-1]},) training gradient norms")
    norms = norms.to(scores.device, scores.dtype)
    return torch.where(norms > 0, scores / norms.clamp_min(torch.finfo(scores.dtype).tiny), 0.0)


# ---------------------------------------------------------------------------------------------
# Self-influence: the training examples the model finds surprising
# ---------------------------------------------------------------------------------------------

EXACT_MAX_PARAMS = 4096
"""Largest θ_S for which :func:`self_influence_solver` turns ``solver="auto"`` into the exact
solver: the explicit Hessian then costs P HVP directions over the data and a P x P float64 solve
(128 MB at 4,096), less than CG's ~10 passes with one direction per training example."""


BLOCK_FLOATS = 2 ** 24
"""Per-example gradients :func:`self_influence` holds at once (rows x P floats, 64 MB in float32):
each block of rows is one :func:`~hf_pairdots.solve.compute_s_test` call."""


@dataclass
class SelfInfluence:
    """Self-influence of every training example (:func:`self_influence`).

    Attributes:
        scores: ``(n,)`` on the CPU, in the order of the texts given to :func:`~hf_pairdots.loss.prepare_data`
            (``(len(rows),)`` in the order of ``rows`` when only those were scored).
        diagnostics: ``solver``, ``damping`` (resolved), the eigenvalue estimates when damping was
            automatic, ``block_rows`` (rows per solve) and ``max_relative_residual`` (the worst row's
            ||(H + λI)s - ∇L(z)|| / ||∇L(z)||).
    """

    scores: Tensor
    diagnostics: dict


def example_gradients(objective: TrainLoss, batch: dict) -> Tensor:
    """∇θ L(z_i) for the examples of a prepared batch, ``(B, P)`` on the parameters' device.

    Cost: B backward passes, vectorised (``torch.func.jacrev``) for a vectorised loss (the cached
    top), one at a time otherwise (:func:`~hf_pairdots.measurement.loss_measurement_gradient`);
    memory B x P floats.
    """
    if not objective.vectorized:
        return loss_measurement_gradient(objective, batch)
    with torch.inference_mode(False), torch.enable_grad():
        return torch.func.jacrev(lambda theta: objective.per_example_loss(theta, batch))(objective.theta)


def mean_loss_gradient(objective: TrainLoss, data: PreparedData) -> Tensor:
    """∇θ of the mean loss over ``data``, ``(P,)`` on the parameters' device: the ∇θ m of
    Koh & Liang's influence on a whole split's loss (e.g. the dev loss). Cost: one backward pass
    over the data; memory one batch and one ``(P,)`` vector."""
    out = torch.zeros_like(objective.theta)
    with torch.inference_mode(False), torch.enable_grad():
        for batch in data.batches:
            weight = len(batch["labels"]) / data.size
            out += weight * torch.func.grad(lambda theta: objective.mean_loss(theta, batch))(objective.theta)
    return out


def self_influence_solver(objective: TrainLoss, data: PreparedData,
                          options: SolverArguments | None = None) -> tuple[SolverArguments, dict]:
    """``options`` made concrete for :func:`self_influence`: ``solver="auto"`` becomes ``"exact"``
    when θ_S has at most :data:`EXACT_MAX_PARAMS` parameters (e.g. ``params="classifier"``, 770
    for MiniLM-L6) and no LiSSA-only option is set, else :func:`~hf_pairdots.solve.choose_solver` decides; automatic
    damping is resolved once (:func:`~hf_pairdots.solve.resolve_damping_scale`). Returns ``(options, estimates)``."""
    options = options or SolverArguments()
    lissa_only = options.scale is not None or options.repeat > 1 or options.keep_repeats
    if options.solver == "auto" and objective.params.numel <= EXACT_MAX_PARAMS and not lissa_only:
        options = dataclasses.replace(options, solver="exact")
    return resolve_damping_scale(objective, data, options)


def self_influence(objective: TrainLoss, data: PreparedData, options: SolverArguments | None = None, *,
                   rows: Sequence[int] | None = None, residual_examples: int = 256) -> SelfInfluence:
    """Self-influence of every training example: ∇θL(z_i)ᵀ (H + λI)⁻¹ ∇θL(z_i).

    Sign: ≥ 0 whenever H + λI is positive definite (automatic damping makes it so). It is minus
    the influence of z_i on its own loss, I(z_i, L(z_i)) of Eq. 4: up-weighting z_i lowers its
    loss by that much. Large means the model finds z_i surprising: its loss gradient points where
    the rest of the data gives little curvature, which is typical of a mislabelled, atypical or
    ambiguous example ("training examples the model finds suspicious"; Koh & Liang 2017, Sec. 5.4).

    The per-example gradients are streamed in blocks of ``BLOCK_FLOATS // P`` rows (rows from
    several batches are merged); each block is one :func:`~hf_pairdots.solve.compute_s_test` call with the block's
    gradients as its Q rows, and each score is the dot product of a row with its own solution.
    ``options`` is made concrete once by :func:`self_influence_solver` (exact for small θ_S).
    ``rows``: score only these examples (positions in the order given to :func:`~hf_pairdots.loss.prepare_data`;
    the Hessian is still that of all of ``data``); ``scores`` is then ``(len(rows),)`` in their order.

    Cost: n (or len(rows)) backward passes for the gradients, plus one solve per block: exact, one explicit
    Hessian (P HVP directions over the data) and a P x P solve per block (one block for
    n x P ≤ 2^24, e.g. n ≤ 21,000 for P = 770); CG, about 10 full-data HVP passes per row, i.e.
    n times the cost of one query's s_test (quadratic in n; ``"head"`` against ``"classifier"`` is
    measured in ``benchmarks/RESULTS.md``, "Noisy labels"); plus the residual check of every row.
    Memory: one block of gradients and the solver's work vectors (a few x block x P floats).

    Raises:
        LissaDivergenceError, FloatingPointError: from :func:`~hf_pairdots.solve.compute_s_test`.
    """
    options, estimates = self_influence_solver(objective, data, options)
    block = max(1, BLOCK_FLOATS // objective.params.numel)
    wanted = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    scores = torch.empty(data.size, dtype=objective.theta.dtype)
    residuals = []
    for index, gradients in _gradient_blocks(objective, data, block, wanted):
        result = compute_s_test(objective, data, gradients, options, residual_examples)
        scores[index] = (gradients * result.x).sum(1).cpu()
        residuals += result.relative_residual
    diagnostics = {"solver": options.solver, "damping": options.damping, **estimates, "block_rows": block,
                   "max_relative_residual": max(residuals, default=0.0)}
    return SelfInfluence(scores if wanted is None else scores[wanted], diagnostics)


def _gradient_blocks(objective: TrainLoss, data: PreparedData, rows: int, wanted: Tensor | None = None):
    """Yield ``(index (B,), ∇θL (B, P))`` over ``data`` (only the positions ``wanted`` when given)
    in blocks of at most ``rows`` examples."""
    indices, gradients, count = [], [], 0
    for batch in data.batches:
        if wanted is not None:
            keep = torch.isin(batch["index"], wanted)
            batch = {k: v[keep.to(v.device)] if isinstance(v, Tensor) else v for k, v in batch.items()}
        for start in range(0, len(batch["labels"]), rows):
            part = {k: v[start:start + rows] if isinstance(v, Tensor) else v for k, v in batch.items()}
            if count + len(part["labels"]) > rows:
                yield torch.cat(indices), torch.cat(gradients)
                indices, gradients, count = [], [], 0
            indices.append(part["index"])
            gradients.append(example_gradients(objective, part))
            count += len(part["labels"])
    if indices:
        yield torch.cat(indices), torch.cat(gradients)


DISAGREEMENT_Z = 2.0
"""z above which :func:`tail_disagreement` reports that the two rankings disagree."""


def tail_disagreement(self_scores: Tensor, influence: Tensor, fraction: float = 0.1) -> dict:
    """Where the training examples with the largest self-influence fall in an influence ranking.

    With n examples and k = min(n // 2, max(1, round(fraction x n))): S is the k largest
    ``self_scores``; the *harmful* tail is the k largest ``influence`` (for the influence on a
    loss, I(z, L) > 0: up-weighting z raises the loss), the *helpful* tail the k smallest.
    a = |S ∩ helpful|, b = |S ∩ harmful|. The statistic is the sign test of a against b:
    z = (a - b) / sqrt(a + b) (0 when a + b = 0), and ``disagree`` is z > :data:`DISAGREEMENT_Z`:
    the examples the model finds most surprising sit in the helpful tail of the loss ranking
    significantly more than in its harmful tail, so ranking by loss influence would not surface
    them. The null hypothesis is that being suspicious says nothing about the *sign* of the loss
    influence; then each member of S that lies in one of the two tails lies in either with
    probability 1/2, a | a + b ~ Binomial(a + b, 1/2), and z is about standard normal (one-sided
    false alarm rate about 2.3 % for large a + b; z cannot exceed sqrt(k), so k ≥ 5 is needed).
    It is conditioned on a + b because the two scores are not independent in size: a large
    self-influence means a large ‖(H + λI)^(-1/2) ∇L(z)‖ and so a large |influence| on any loss
    (on SST-2 with MiniLM, all 200 of the top decile by self-influence fell in one of the two
    tails, where independent rankings would put 40: a test against independent rankings would
    fire at any sign imbalance).

    Args:
        self_scores, influence: ``(n,)`` each, the same examples in the same order.
        fraction: the size of S and of each tail, as a share of n (0.1: deciles).

    Returns:
        ``{"fraction", "k", "chance" (k / n, each share if the rankings were independent),
        "in_helpful" (a / k), "in_harmful" (b / k), "z", "disagree"}`` (plain Python numbers).

    Raises:
        ValueError: shapes differ, fewer than 2 examples, or ``fraction`` outside (0, 0.5].
    """
    n = self_scores.numel()
    if self_scores.shape != influence.shape or self_scores.dim() != 1 or n < 2:
        raise ValueError(f"tail_disagreement needs two (n,) score vectors with n >= 2; got "
                         f"{tuple(self_scores.shape)} and {tuple(influence.shape)}")
    if not 0 < fraction <= 0.5:
        raise ValueError(f"tail_disagreement: fraction={fraction} must lie in (0, 0.5]")
    k = min(n // 2, max(1, round(fraction * n)))
    top = set(torch.topk(self_scores, k).indices.tolist())
    helpful = len(top & set(torch.topk(influence, k, largest=False).indices.tolist()))
    harmful = len(top & set(torch.topk(influence, k).indices.tolist()))
    z = (helpful - harmful) / math.sqrt(helpful + harmful) if helpful + harmful else 0.0
    return {"fraction": fraction, "k": k, "chance": k / n, "in_helpful": helpful / k, "in_harmful": harmful / k,
            "z": z, "disagree": z > DISAGREEMENT_Z}


# ---------------------------------------------------------------------------------------------
# Perturbed examples and their words (Eq. 6-8)
# ---------------------------------------------------------------------------------------------

def example_influence(objective: TrainLoss, tokenizer, texts: Sequence[str], labels: Sequence[int],
                      s_test: Tensor, *, max_length: int = 128, inputs_embeds: Tensor | None = None) -> Tensor:
    """I(z, m_q) for a handful of (possibly perturbed) examples given as texts, ``(Q, len(texts))``
    on the CPU. ``s_test`` may live on any device (moved to the parameters').

    ``inputs_embeds`` ``(len(texts), L, H)``: embeddings to use instead of the word-embedding
    lookup, for the texts as :func:`~hf_pairdots.text.encode_words` tokenises them (no
    extra padding), on any device. Raises ``ValueError`` when their shape does not match that
    tokenisation.
    """
    return _prepared_influence(objective, _prepare_examples(objective, tokenizer, texts, labels, max_length,
                                                             inputs_embeds), s_test)


def _prepare_examples(objective: TrainLoss, tokenizer, texts, labels, max_length: int, inputs_embeds=None) -> dict:
    # No extra padding: these batches (a text and its variants) are about one length already.
    batch = tokenize(tokenizer, texts, label_tensor(objective.model, labels), max_length, None)
    if inputs_embeds is not None and inputs_embeds.shape[:2] != batch["input_ids"].shape:
        raise ValueError(f"inputs_embeds has shape {tuple(inputs_embeds.shape)}; the texts tokenise to "
                         f"{tuple(batch['input_ids'].shape)} (batch, length)")
    if inputs_embeds is not None:
        batch["inputs_embeds"] = inputs_embeds
        del batch["input_ids"]
    with torch.no_grad():
        return objective.prepare(batch)


def _prepared_influence(objective: TrainLoss, prepared: dict, s_test: Tensor) -> Tensor:
    with torch.no_grad():
        return (-loss_directional(objective, prepared, s_test.to(objective.theta.device))).cpu()


def perturbation_influence(objective: TrainLoss, tokenizer, text: str, label: int, variants: Sequence[str],
                           s_test: Tensor, *, max_length: int = 128) -> Tensor:
    """I(z, z̃, m) = I(z̃, m) - I(z, m) for each perturbed text z̃ of z (Eq. 6-7), ``(Q, V)`` on the CPU.

    The perturbed example keeps z's label. Positive: replacing z by z̃ raises m.
    Cost: one forward-mode pass over V + 1 examples.
    """
    scores = example_influence(objective, tokenizer, [text, *variants], [label] * (len(variants) + 1),
                               s_test, max_length=max_length)
    return scores[:, 1:] - scores[:, :1]


from .constants import ERASERS, RANKINGS  # noqa: E402  (the choice lists live in constants.py)


def erased_variants(tokenizer, text: str, eraser: str = "unk") -> list[str]:
    """The texts z̃(t, UNK) of Eq. 8: each whitespace word replaced by the tokenizer's UNK
    (``"unk"``) or mask (``"mask"``) token. Tokenizers without that token raise ``ValueError``
    naming the alternatives; ``"zero"`` needs no token (see :func:`word_influence`).

    Byte-level BPE tokenizers have no UNK of their own: GPT-2's and Qwen2's ``unk_token`` is
    ``"<|endoftext|>"``, also their EOS and (by the usual recipe) pad token, and Llama-family
    classifiers often set pad to ``"<unk>"``. That token is then the eraser, by choice
    (docs/architectures.md): a decoder classifier reads the last non-pad token, so erasing the
    last word with it makes the model read the token before; ``eraser="zero"`` (the word's
    embeddings set to zero) has no such effect."""
    token = eraser_token(tokenizer, eraser)
    words = text.split()
    return [" ".join(words[:t] + [token] + words[t + 1:]) for t in range(len(words))]


def word_influence(objective: TrainLoss, tokenizer, text: str, label: int, s_test: Tensor, *,
                   eraser: str = "unk", max_length: int = 128, prepared: dict | None = None) -> Tensor:
    """I(x_t, m) = I(z, m) - I(z̃(t, UNK), m) for each whitespace word x_t of z (Eq. 8), ``(Q, W)``
    on the CPU.

    ``eraser``: ``"unk"`` (the paper), ``"mask"``, or ``"zero"`` (the word's word-piece
    embeddings set to zero: the paper's footnote 2). Positive: the word's presence raises m.
    Only the words with a token in the model's input are erased (the encoding's word ids:
    :func:`~hf_pairdots.text.scored_words`); a word past ``max_length``, or one the
    tokenizer's normaliser deletes (a zero-width space), changes nothing in the input, so its
    score is exactly 0, and every other score stays on its own word. Callers report such words
    as not scored. ``prepared``: the result of :func:`prepare_word_variants` for the same
    arguments, to reuse across measurements. Cost: one forward pass over W + 1 examples (none
    with ``prepared``) and one forward-mode pass of θ_S's part.
    """
    if prepared is None:
        prepared = prepare_word_variants(objective, tokenizer, text, label, eraser=eraser, max_length=max_length)
    scores = _prepared_influence(objective, prepared, s_test)
    out = torch.zeros(scores.shape[0], len(text.split()), dtype=scores.dtype)
    out[:, prepared["word_index"]] = scores[:, :1] - scores[:, 1:]  # words not in the input: exactly 0
    return out


def prepare_word_variants(objective: TrainLoss, tokenizer, text: str, label: int, *, eraser: str = "unk",
                          max_length: int = 128) -> dict:
    """z and its erased variants z̃(t, ·) of Eq. 8 as one objective-ready batch: what
    :func:`word_influence` scores, independent of s_test. One variant per word with a token in
    the model's input (W' ≤ W words, listed in ``"word_index"``: the encoding's word ids, so a
    word past ``max_length`` or deleted by the normaliser, which would give z itself, has none),
    so W' + 1 rows; for a cached-top objective ``(W' + 1, H)`` features on the model's device.
    Cost: one forward pass over W' + 1 examples. Raises ``ValueError`` for an eraser token the
    tokenizer lacks."""
    encoded = EncodedText.encode(tokenizer, text, max_length)
    scored = encoded.scored
    labels = [label] * (len(scored) + 1)
    if eraser == "zero":
        rows = _prepare_examples(objective, tokenizer, [text] * len(labels), labels, max_length,
                                 zeroed_word_embeddings(objective.model, encoded, scored))
    else:
        variants = erased_variants(tokenizer, text, eraser)
        rows = _prepare_examples(objective, tokenizer, [text, *(variants[t] for t in scored)], labels, max_length)
    return {**rows, "word_index": scored}
