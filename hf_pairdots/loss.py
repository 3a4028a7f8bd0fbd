"""The training loss L(z; θ_S) of Eq. 4-5 and the training data prepared for it.

* :class:`TrainLoss`: the per-example training loss of :func:`example_losses` (float32; the
  model's ``problem_type``, with the training's label smoothing and class weights) as a
  function of the flat θ_S, in two implementations: :class:`FullModelLoss` (any model, any
  θ_S) and :class:`CachedTopLoss` (BERT family, RoBERTa, XLM-R, ELECTRA, MPNet, DeBERTa-v2;
  θ_S above a cut of :mod:`hf_pairdots.features`: the bottom of the network runs once per
  example); :func:`make_train_loss` picks the cheapest exact one.
* :class:`PreparedData`: the training set tokenised, length-sorted, batched and prepared once
  (:func:`prepare_data`), with the mini-batch draws of a stochastic HVP (:meth:`PreparedData.sample`)
  and the per-process shares of a distributed run (:meth:`PreparedData.shard`).
* the products influence needs of L: :func:`full_hvp` / :func:`mean_hvp` (Hessian of the mean
  loss times V) and :func:`loss_directional` (∇θL(z_i)ᵀ s for every example, forward mode).

The names these had before (``Objective``, ``FullModelObjective``, ``CachedTopObjective``,
``make_objective``) stay as aliases of the same objects.

Devices: prepared batches (token tensors, cached features, labels), θ_S and every product live
on the model's device (``TrainLoss.device``); arguments may come from anywhere and are moved
there. Random draws use CPU generators, so a seed picks the same examples on every device.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autograd import ParameterSet, directional_derivatives, hvp, select_parameters
from .features import TopHead, available_cuts, compute_features, cut_features, supports_top_head
from .measurement import saliency_measurement_gradient
from .modeling import (INPUT_KEYS, MULTI_LABEL, SINGLE_LABEL, check_labels, find_embedding_block, first_position_only,
                       label_tensor, model_device, model_inputs, problem_type, sequence_length,
                       suspend_input_require_grads)
from .saliency import LINEAR_MODES, label_score, saliency_direction
from .text import word_encoding


def example_losses(logits: Tensor, labels: Tensor, kind: str = SINGLE_LABEL, *, label_smoothing: float = 0.0,
                   class_weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Per-example training loss ``(B,)`` of ``(B, K)`` logits, float32, as the
    ``*ForSequenceClassification`` head of ``config.problem_type`` ``kind`` computes its mean:
    cross-entropy against class ids (``"single_label_classification"``), binary cross-entropy
    with logits averaged over the K labels against multi-hot ``(B, K)`` targets
    (``"multi_label_classification"``), squared error against float targets (``"regression"``,
    averaged over the K outputs; ``(B,)`` targets for K = 1). The mean over examples equals
    the model's own ``outputs.loss``. ``labels`` may live anywhere (moved to ``logits``' device).

    Single-label only, the two terms the Trainer adds to the loss it trains with:
    ``label_smoothing`` ε (``TrainingArguments.label_smoothing_factor``; the Trainer's
    ``LabelSmoother``): ℓ = (1 - ε)(-log p_y) + (ε/K) Σ_k (-log p_k); ``class_weights`` ``(K,)``
    w (``nn.CrossEntropyLoss(weight=w)`` in a custom ``compute_loss``): each class's terms
    weighted, ℓ = (1 - ε) w_y (-log p_y) + (ε/K) Σ_k w_k (-log p_k) (``F.cross_entropy`` with
    ``reduction="none"``; the weighted mean a Trainer takes is Σ_i ℓ_i / Σ_i w_{y_i}, the same
    minimiser as the plain mean over a data set, which influence uses: see
    docs/architectures.md).

    Raises:
        ValueError: smoothing or weights for another problem type, ε outside [0, 1), or weights
            that are not K finite non-negative numbers with a positive sum.
    """
    logits = logits.float()
    labels = labels.to(logits.device)
    weight = check_loss_terms(kind, logits.shape[-1], label_smoothing, class_weights)
    if kind == SINGLE_LABEL:
        return F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits.device),
                               label_smoothing=label_smoothing, reduction="none")
    target = labels.float().reshape(logits.shape)
    if kind == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    return (logits - target).square().mean(-1)


def check_loss_terms(kind: str, num_labels: int, label_smoothing: float = 0.0,
                     class_weights: Sequence[float] | Tensor | None = None) -> Tensor | None:
    """The ``(K,)`` float32 CPU tensor of ``class_weights`` (None stays None) after checking both
    loss terms of :func:`example_losses` for a head of ``num_labels`` outputs.

    Raises:
        ValueError: as :func:`example_losses`.
    """
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing}: must lie in [0, 1)")
    if kind != SINGLE_LABEL and (label_smoothing or class_weights is not None):
        raise ValueError(f"label_smoothing and class_weights are terms of the single-label cross-entropy; the "
                         f"model's problem_type is {kind!r} (leave both unset)")
    if class_weights is None:
        return None
    weight = torch.as_tensor(class_weights, dtype=torch.float32).detach().cpu()
    if weight.shape != (num_labels,) or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()) \
            or float(weight.sum()) <= 0:
        raise ValueError(f"class_weights={weight.tolist()}: give {num_labels} finite weights >= 0 (one per label) "
                         "with a positive sum")
    return weight


class TrainLoss:
    """The training loss L(z; θ_S) (:func:`example_losses` of the model's ``config.problem_type``:
    cross-entropy, binary cross-entropy or squared error; float32) as a function of the flat θ_S.

    ``prepare(batch)`` turns a tokenised batch with ``labels`` (on any device) into what
    ``per_example_loss`` reads, on :attr:`device`. Two implementations:
    :class:`FullModelLoss` (any model, any subset) and :class:`CachedTopLoss` (BERT
    family, ``"top"`` subset, features cached).

    Attributes:
        device: the model's device (:func:`~hf_pairdots.modeling.model_device`); ``theta``, the
            prepared batches and every product live there.
    """

    vectorized = False
    #: Prepared rows are independent and unpadded (cached features): batches may be regrouped into
    #: larger blocks and mini-batches drawn row by row (see :class:`PreparedData`).
    rowwise = False

    def __init__(self, model: nn.Module, params: ParameterSet, *, label_smoothing: float = 0.0,
                 class_weights: Sequence[float] | Tensor | None = None):
        self.model = model
        self.params = params
        self.device = model_device(model)
        self.theta = params.flat()
        self.problem_type = problem_type(model)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = check_loss_terms(self.problem_type, model.config.num_labels, label_smoothing,
                                              class_weights)

    def prepare(self, batch: dict) -> dict:
        raise NotImplementedError

    def prepare_many(self, batches: Sequence[dict]) -> list[dict]:
        """``prepare`` for every batch, each keeping its ``"index"`` (subclasses may share one
        buffer across batches and regroup them)."""
        return [dict(self.prepare(batch), index=batch["index"]) for batch in batches]

    def per_example_loss(self, theta: Tensor, batch: dict) -> Tensor:
        """``(B,)`` losses of a prepared batch at ``theta``: :meth:`output_loss` of :meth:`logits`."""
        return self.output_loss(self.logits(theta, batch), batch)

    def logits(self, theta: Tensor, batch: dict) -> Tensor:
        """``(B, C)`` float32 logits of a prepared batch at ``theta`` (the network's output f(z; θ))."""
        raise NotImplementedError

    def output_loss(self, logits: Tensor, batch: dict) -> Tensor:
        """``(B,)`` loss of each example as a function of its logits alone (:func:`example_losses`
        of the model's problem type): the outer function ℓ of L(z; θ) = ℓ(f(z; θ)), whose Hessian
        the Gauss-Newton product uses."""
        return example_losses(logits, batch["labels"], self.problem_type, label_smoothing=self.label_smoothing,
                              class_weights=self.class_weights)

    @property
    def key_terms(self) -> dict:
        """The loss's non-default terms (``label_smoothing``, ``class_weights`` as a list) for
        s_test cache keys; empty for the plain loss, so keys written before these terms stay valid."""
        terms = {"label_smoothing": self.label_smoothing or None,
                 "class_weights": None if self.class_weights is None else self.class_weights.tolist()}
        return {k: v for k, v in terms.items() if v is not None}

    def mean_loss(self, theta: Tensor, batch: dict) -> Tensor:
        return self.per_example_loss(theta, batch).mean()

    @property
    def key_name(self) -> str:
        """The loss's name in s_test cache keys: its class name, with the names of
        :data:`OLD_NAMES` for the classes renamed, so that caches written before stay valid."""
        name = type(self).__name__
        return OLD_NAMES.get(name, name)

    def saliency_gradients(self, batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]], *,
                           mode: str = "gradient", target: str = "prob") -> Tensor:
        """∇θ w_y(e) of Eq. 5 for several measurements on ONE tokenised text, ``(k, P)`` on
        :attr:`device`: row b is the gradient of the saliency of ``token_positions[b]`` for
        ``labels[b]`` (:func:`~hf_pairdots.measurement.saliency_measurement`). ``batch``: the
        text's inputs, ``(1, L)`` tensors on any device; a position listed twice counts twice. Cost here: k x (forward,
        backward, double backward) of the full model
        (:func:`~hf_pairdots.measurement.saliency_measurement_gradient`);
        :class:`CachedTopLoss` is cheaper.

        Raises:
            ValueError: no label, ``labels`` and ``token_positions`` of different lengths, or a
                batch of more than one text.
        """
        _check_measurement_rows(batch, labels, token_positions)
        return torch.stack([saliency_measurement_gradient(self.model, self.params, batch, y, positions, mode=mode,
                                                          target=target)
                            for y, positions in zip(labels, token_positions)])


class FullModelLoss(TrainLoss):
    """Loss through the whole model. Cost per example: a full forward (JVP) or HVP pass.

    Prepared batches are the token tensors moved to the model's device (n x L integers)."""

    def prepare(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def logits(self, theta: Tensor, batch: dict) -> Tensor:
        with first_position_only(self.model):  # the last feed-forward block on position 0 only (BERT family)
            logits = torch.func.functional_call(self.model, self.params.unflatten(theta), args=(),
                                                kwargs=model_inputs(batch, self.device), strict=False).logits
        return logits.float()


class CachedTopLoss(TrainLoss):
    """Loss through :class:`~hf_pairdots.features.TopHead` on cached features (BERT family:
    BERT, RoBERTa, XLM-R, ELECTRA, MPNet, DeBERTa-v2; :func:`~hf_pairdots.features.supports_top_head`).

    ``prepare`` runs the bottom of the model once (one forward pass, no gradient); after that a
    loss, JVP or HVP touches only the top feed-forward block, pooler and classifier, or only
    the pooler and classifier when θ_S lies in them (the ``"head"`` preset: the features are
    then the pooler's input), or only the classifier (``"classifier"``: the pooled output).
    """

    vectorized = True
    rowwise = True

    def __init__(self, model: nn.Module, params: ParameterSet, **loss_terms):
        super().__init__(model, params, **loss_terms)
        # the highest cut whose modules hold θ_S
        cut = next((c for c in reversed(available_cuts(model)) if set(params.names) <= TopHead(model, c).parameter_names()),
                   "ffn")
        self.head = TopHead(model, cut)
        outside = set(params.names) - self.head.parameter_names()
        if outside:
            raise ValueError(f"parameters outside the cached top: {sorted(outside)[:3]}...; use FullModelLoss")

    def prepare(self, batch: dict) -> dict:
        return {"features": compute_features(self.model, batch, cut=self.head.cut), "labels": batch["labels"].to(self.device)}

    def prepare_many(self, batches: Sequence[dict]) -> list[dict]:
        """The features of all batches written into ONE ``(N, H)`` buffer, returned as blocks of
        at most :data:`BLOCK_ROWS` rows (views of the buffer, with their ``labels`` and ``index``).

        One allocation instead of one small long-lived tensor per batch, and the forward passes
        run longest batch first (``prepare_data`` sorts by length), so each pass's temporaries fit
        in memory the previous, larger pass freed. Otherwise the C heap grows with N (see
        ``benchmarks/RESULTS.md``, table (d)) though the features are H floats each.
        Blocks instead of the forward batches: a vectorised HVP or JVP over 512 cached rows costs
        about half as much per row as over 32 (fewer, larger products; measured on MiniLM-L6).
        The buffer lives on the model's device.
        """
        sizes = [len(b["labels"]) for b in batches]
        buffer = torch.empty(sum(sizes), self.model.config.hidden_size, device=self.device)
        ends = list(itertools.accumulate(sizes))
        for batch, size, end in reversed(list(zip(batches, sizes, ends))):
            compute_features(self.model, batch, out=buffer[end - size:end], cut=self.head.cut)
        labels = torch.cat([b["labels"] for b in batches]).to(self.device)
        index = torch.cat([b["index"] for b in batches])
        return [{"features": buffer[s:s + BLOCK_ROWS], "labels": labels[s:s + BLOCK_ROWS], "index": index[s:s + BLOCK_ROWS]}
                for s in range(0, len(buffer), BLOCK_ROWS)]

    def logits(self, theta: Tensor, batch: dict) -> Tensor:
        return self._logits(theta, batch["features"])

    def _logits(self, theta: Tensor, features: Tensor) -> Tensor:
        named = {"model." + n: t for n, t in self.params.unflatten(theta).items()}
        return torch.func.functional_call(self.head, named, (features,), strict=False).float()

    def saliency_gradients(self, batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]], *,
                           mode: str = "gradient", target: str = "prob") -> Tensor:
        """∇θ w_y(e) of Eq. 5, ``(k, P)``, as :meth:`TrainLoss.saliency_gradients` but with one
        Jacobian-vector product of the network below the cut instead of k double-backward passes
        through the whole model.

        θ_S lies above the cut, so S_y depends on the embeddings e only through the cut features
        h(e) (which do not depend on θ_S), and the measurement is a directional derivative:
        w_y(e) = Σ_{t∈T} Σ_j ∂S_y/∂e_t,j = ∇_h S_y(h; θ_S) · u, u = J_h(e) d, with d the all-ones
        vector on the positions T (``mode="gradient"``) or e itself there (``"grad_x_input"``).
        u is one Jacobian-vector product of the bottom of the model (the k rows batched; by a
        double backward pass, which PyTorch runs faster than forward mode here); ∇θ_S of
        ∇_h S_y · u is a double backward through the head alone. Same value as the general route
        (a test checks it); ``mode="l2"`` is not linear in ∂S_y/∂e and takes the general route.
        Cost: one forward and two backward passes of k rows of the text, instead of k x three.
        """
        if mode not in LINEAR_MODES:
            return super().saliency_gradients(batch, labels, token_positions, mode=mode, target=target)
        _check_measurement_rows(batch, labels, token_positions)
        with torch.inference_mode(False), torch.enable_grad():  # even inside a caller's no_grad or inference_mode
            return self._saliency_gradients(batch, labels, token_positions, mode, target)

    def _saliency_gradients(self, batch, labels, token_positions, mode, target) -> Tensor:
        k = len(labels)
        # clone: tensors made under inference_mode cannot be saved for backward
        inputs = {key: t.expand(k, *t.shape[1:]).clone() for key, t in model_inputs(batch, self.device).items()}
        mask = torch.zeros(k, sequence_length(inputs), 1, device=self.device)
        for b, positions in enumerate(token_positions):
            for position in positions:  # summed, as the general route sums the listed saliencies
                mask[b, position] += 1.0
        step = torch.zeros(k, device=self.device, requires_grad=True)

        def along_d(module, args, output):  # e + s_b d_b for row b: d h_b / d s_b at s = 0 is J_h(e) d_b
            direction = mask * saliency_direction(mode, output.detach())
            return output + step[:, None, None] * direction

        handle = find_embedding_block(self.model).register_forward_hook(along_d)
        try:
            with suspend_input_require_grads(self.model):
                h = cut_features(self.model, inputs, self.head.cut).float()
            # J_h d by reverse over reverse (faster here than torch.func.jvp): g(w) = J_hᵀ w is
            # linear in w, and the rows are independent, so ∂(Σ_b g_b)/∂w_b = J_h d_b.
            w = torch.zeros_like(h, requires_grad=True)
            (g,) = torch.autograd.grad(h, step, w, create_graph=True)
            (u,) = torch.autograd.grad(g.sum(), w)
        finally:
            handle.remove()
        y = torch.as_tensor(list(labels), device=self.device)

        def measurement(theta: Tensor, b: int) -> Tensor:
            score = lambda x: label_score(self._logits(theta, x[None]), y[b:b + 1], target,  # noqa: E731
                                          self.problem_type)[0]
            return torch.func.grad(score)(h[b].detach()) @ u[b]

        return torch.stack([torch.func.grad(measurement)(self.theta, b) for b in range(k)])


def _check_measurement_rows(batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]]) -> None:
    rows = {len(t) for key, t in batch.items() if key in INPUT_KEYS}
    if rows != {1}:
        raise ValueError(f"saliency_gradients takes one tokenised text; got a batch of {sorted(rows)} rows")
    if not labels or len(labels) != len(token_positions):
        raise ValueError(f"saliency_gradients: {len(labels)} labels and {len(token_positions)} position lists; "
                         "give one (non-empty) list of each, one entry per measurement")


def make_train_loss(model: nn.Module, params: str | Sequence[str] | ParameterSet = "head", *,
                    label_smoothing: float = 0.0, class_weights: Sequence[float] | Tensor | None = None) -> TrainLoss:
    """The cheapest exact training loss for ``params``: cached top when possible, else the full
    model. ``label_smoothing`` and ``class_weights``: the terms of :func:`example_losses` the
    model was trained with (default: none)."""
    pset = params if isinstance(params, ParameterSet) else select_parameters(model, params)
    terms = {"label_smoothing": label_smoothing, "class_weights": class_weights}
    if supports_top_head(model) and set(pset.names) <= TopHead(model).parameter_names():
        return CachedTopLoss(model, pset, **terms)
    return FullModelLoss(model, pset, **terms)


# Aliases: the names of these objects before the rename to "loss" (same classes, same function).
OLD_NAMES = {"TrainLoss": "Objective", "FullModelLoss": "FullModelObjective", "CachedTopLoss": "CachedTopObjective"}
"""Class name -> the name it had before (what :attr:`TrainLoss.key_name` writes into cache keys)."""
Objective = TrainLoss
FullModelObjective = FullModelLoss
CachedTopObjective = CachedTopLoss
make_objective = make_train_loss


# ---------------------------------------------------------------------------------------------
# Training data, prepared once
# ---------------------------------------------------------------------------------------------

#: Rows per block of a row-wise objective's prepared data (:meth:`CachedTopLoss.prepare_many`):
#: large enough to amortise the per-call cost of a vectorised product, small enough that a
#: product over Q directions holds Q x 512 rows of activations at a time.
BLOCK_ROWS = 512


@dataclass
class PreparedData:
    """Training examples in objective-ready batches (length-sorted to avoid padding waste).

    Attributes:
        batches: objective batches (on the objective's device); each has ``"index"``, the
            examples' positions in the input (a CPU tensor: bookkeeping). For a row-wise
            objective (cached features) these are blocks of up to :data:`BLOCK_ROWS` rows.
        size: n, the number of examples.
        rowwise: the batches hold independent, unpadded rows (``TrainLoss.rowwise``), so
            :meth:`sample` may draw single rows.
    """

    batches: list[dict]
    size: int
    rowwise: bool = False

    def sample(self, generator: torch.Generator, num_examples: int) -> list[dict]:
        """A mini-batch of about ``num_examples`` examples drawn uniformly without replacement,
        as a list of batches: the mini-batch of a stochastic HVP. Row-wise data: exactly
        ``min(num_examples, n)`` rows gathered into one batch; otherwise whole batches (at least
        one). ``generator``: a CPU generator (the draw is host-side, the same whatever the
        model's device)."""
        if not self.rowwise:
            per_batch = max(1, self.size // max(1, len(self.batches)))
            count = min(len(self.batches), max(1, round(num_examples / per_batch)))
            return [self.batches[i] for i in torch.randperm(len(self.batches), generator=generator)[:count].tolist()]
        picks = sorted(torch.randperm(self.size, generator=generator)[:num_examples].tolist())
        parts, start = [], 0
        for batch in self.batches:
            size = len(batch["labels"])
            local = [i - start for i in picks[bisect.bisect_left(picks, start):bisect.bisect_left(picks, start + size)]]
            if local:
                parts.append({k: v[torch.as_tensor(local, device=v.device)] for k, v in batch.items()})
            start += size
        return [{k: torch.cat([part[k] for part in parts]) for k in parts[0]}]

    def shard(self, rank: int, world_size: int) -> tuple[PreparedData, Tensor]:
        """The share of process ``rank`` out of ``world_size``: every ``world_size``-th batch from
        ``rank`` on (round robin: no padding, shares differ by at most one batch, and over
        length-sorted batches every rank gets short and long ones), as data of its own.

        Returns ``(local, ids)``: ``local``'s ``"index"`` are renumbered ``0..m-1`` in batch order
        (so scoring ``local`` gives one column per example, in that order); ``ids`` ``(m,)`` (CPU)
        are those examples' positions in this data. The batches are shared, not copied.

        Raises:
            ValueError: ``rank`` outside ``0..world_size - 1``.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        mine = self.batches[rank::world_size]
        ids = torch.cat([b["index"] for b in mine]) if mine else torch.empty(0, dtype=torch.long)
        starts = itertools.accumulate((len(b["index"]) for b in mine), initial=0)
        local = [dict(b, index=torch.arange(start, start + len(b["index"]))) for b, start in zip(mine, starts)]
        return PreparedData(local, len(ids), rowwise=self.rowwise), ids


PAD_MULTIPLE = 8


def tokenize(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int,
             pad_to_multiple_of: int | None = PAD_MULTIPLE, rows: Sequence[int] | None = None) -> dict:
    """Padded CPU tensors for a batch of texts, whitespace words kept one-to-one (``word_ids``);
    ``labels``: a tensor kept as it is (float targets, multi-hot rows), else int64 class ids;
    :meth:`TrainLoss.prepare` moves them to the model's device. ``rows``: the caller's row index
    of each text, named in the ValueError of an empty text (see
    :func:`~hf_pairdots.text.encode_words`).

    Lengths are padded to a multiple of :data:`PAD_MULTIPLE`: with length-sorted batches every
    batch would otherwise have its own shape, and the CPU kernels' per-shape caches made peak
    memory grow with the number of batches (measured +43 % from N = 500 to 2,000, now < 10 %).
    """
    enc, _ = word_encoding(tokenizer, texts, max_length, pad_to_multiple_of=pad_to_multiple_of, rows=rows)
    batch = dict(enc)
    batch["labels"] = labels if isinstance(labels, Tensor) else torch.as_tensor(list(labels), dtype=torch.long)
    return batch


def prepare_data(objective: TrainLoss, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
                 batch_size: int = 32, max_length: int = 128, rows: Sequence[int] | None = None) -> PreparedData:
    """Tokenise, sort by length, batch and ``prepare`` the training set.

    ``rows``: the caller's row index of each text (default its position), named in errors: the
    :class:`~hf_pairdots.explain.Explainer` passes the dataset rows it kept. Batches' ``"index"``
    are positions in ``texts`` whatever ``rows`` is.

    Cost: for :class:`CachedTopLoss`, one forward pass over the data (about a third of a
    training epoch); memory n x H floats. For :class:`FullModelLoss`, tokenisation only.

    Raises:
        ValueError: a label outside the model's labels, or an empty or whitespace-only text
            (naming the row; leave such rows out, as the Explainer does).
    """
    rows = list(range(len(texts))) if rows is None else list(rows)
    check_labels(objective.model, torch.as_tensor(list(labels)), rows)
    labels = label_tensor(objective.model, labels)  # class ids, float targets or multi-hot rows
    order = sorted(range(len(texts)), key=lambda i: len(texts[i].split()))
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    batches = [dict(tokenize(tokenizer, [texts[i] for i in idx], labels[torch.as_tensor(idx)], max_length,
                             rows=[rows[i] for i in idx]), index=torch.as_tensor(idx)) for idx in chunks]
    return PreparedData(objective.prepare_many(batches), len(texts), rowwise=objective.rowwise)


# ---------------------------------------------------------------------------------------------
# Products of the training loss: HVPs and directional derivatives
# ---------------------------------------------------------------------------------------------

def full_hvp(objective: TrainLoss, data: PreparedData):
    """``V (Q, P) -> H V`` for the Hessian of the mean loss over all of ``data``. Cost: one pass."""
    return lambda v: mean_hvp(objective, data.batches, v)


def mean_hvp(objective: TrainLoss, batches: list[dict], v: Tensor) -> Tensor:
    """H_B V for ``v`` ``(Q, P)`` (or ``(P,)``), H_B the Hessian of the mean loss over the examples
    of ``batches`` (prepared batches, e.g. a mini-batch of :meth:`PreparedData.sample`), on the
    parameters' device. Cost: one HVP pass over those examples per direction."""
    total = sum(len(b["labels"]) for b in batches)
    out = torch.zeros_like(v)
    for batch in batches:
        out += len(batch["labels"]) / total * _batch_hvp(objective, batch, v)
    return out


def _per_row(objective: TrainLoss, product, fn, v: Tensor) -> Tensor:
    """``product(fn, θ, v)`` for the rows of ``v``: vectorised (vmap) when the objective allows it."""
    if objective.vectorized:
        return product(fn, objective.theta, v)
    return torch.stack([product(fn, objective.theta, row) for row in v])


def _batch_hvp(objective: TrainLoss, batch: dict, v: Tensor) -> Tensor:
    return _per_row(objective, hvp, lambda theta: objective.mean_loss(theta, batch), v)


def loss_directional(objective: TrainLoss, batch: dict, s_test: Tensor) -> Tensor:
    """∇θL(z_i)ᵀ s_q for the B examples of a prepared batch and the rows of ``s_test`` ``(Q, P)``
    (on the parameters' device): ``(Q, B)`` there. The dot products of Eq. 4-8, by one
    forward-mode pass per row (vectorised for a vectorised loss); no per-example gradient is
    formed."""
    return _per_row(objective, directional_derivatives, lambda theta: objective.per_example_loss(theta, batch), s_test)


def mean_gradient_norm(objective: TrainLoss, data: PreparedData) -> float:
    """||∇θ (1/n) Σ_i L(z_i; θ)||₂ over θ_S at the current weights: about 0 at a trained
    optimum of the loss differentiated (a large value says the model was trained with another
    loss, e.g. a label smoothing or class weights other than ``objective``'s, or is far from
    converged, so H⁻¹ describes another point). Cost: one backward pass over the prepared data (cached features: the head only)."""
    total = torch.zeros_like(objective.theta)
    for batch in data.batches:
        weight = len(batch["labels"]) / data.size
        total += weight * torch.func.grad(lambda theta: objective.mean_loss(theta, batch))(objective.theta)
    return float(total.norm())
