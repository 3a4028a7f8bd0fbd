"""The paper's influence quantities (Sec. 3.2) as named functions.

Sign convention, in every code path (case C10)::

    I(z, m) = d m(θ_{z,ε}) / dε |_{ε=0} = -∇θ m(θ)ᵀ H⁻¹ ∇θ L(z; θ)

Positive means up-weighting the training example z *raises* the measurement m; removing z
changes m by about -I/n. H is the Hessian of the mean training loss over the chosen parameters
θ_S, damped: H + λI. With ``s_test = (H + λI)⁻¹ ∇θ m`` every score is a dot product
``-s_testᵀ ∇θ L(z)``, computed as a forward-mode directional derivative of L(z) along s_test.

* :func:`loss_measurement_gradient`: ∇θ L(z_test) for Koh & Liang's I_up,loss (Eq. 4 chained).
* :func:`saliency_measurement_gradient`: ∇θ w_y(e) of Eq. 5 (double backward through Eq. 2);
  :meth:`Objective.saliency_gradients` picks the cheapest exact route (for cached-top θ_S, one
  Jacobian-vector product below the cut).
* :func:`compute_s_test`: s_test by LiSSA / CG / exact / low rank (App. B); the default
  ``solver="auto"`` is settled by :func:`choose_solver`.
* :func:`train_influence`: I(z_i, m) for every training example (Eq. 4/5), streamed.
* :func:`self_influence`: ∇θL(z_i)ᵀ(H + λI)⁻¹∇θL(z_i) ≥ 0 for every training example (the
  examples the model finds surprising); :func:`tail_disagreement` compares it with a loss ranking.
* :func:`perturbation_influence`: I(z, z̃, m) = I(z̃, m) - I(z, m) (Eq. 6-7).
* :func:`word_influence`: I(x_t, m) = I(z, m) - I(z̃(t, UNK), m) for each word (Eq. 8).

Devices: everything that meets the model runs on the model's device (``Objective.device``, the
device of its first parameter): prepared batches (token tensors, cached features, labels),
θ_S, ∇θ m, s_test and the HVPs. Arguments may come from anywhere (tokenizer output on the CPU,
an s_test read from the cache) and are moved there. What is returned: the P-sized vectors
(∇θ m, s_test) stay on the model's device; the per-example scores (``(Q, n)`` of
:func:`train_influence`, ``(Q, V)`` of Eq. 6-8) are returned on the CPU, ready for records.
Random draws (LiSSA mini-batches, the residual sample) use CPU generators, so a seed picks the
same examples on every device.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ihvp
from .arguments import SolverOptions
from .autograd import ParameterSet, directional_derivatives, hvp, select_parameters
from .features import CUTS, TopHead, compute_features, cut_features, first_position_only, supports_top_head
from .saliency import (INPUT_KEYS, _check_labels, _sequence_length, autocast_disabled, embedding_gradient,
                       find_embedding_block, label_score, model_device, model_inputs, scored_words,
                       suspend_input_require_grads, token_saliency, word_encoding)


# ---------------------------------------------------------------------------------------------
# Numerical hygiene
# ---------------------------------------------------------------------------------------------

def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / accelerate wrappers (``.module``); peft models stay peft models."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode (no dropout) inside the block; afterwards every submodule gets its own mode back.

    Per module: a model can be in mixed mode (peft wraps an eval model in a training-mode
    PeftModel), and ``model.train(was_training)`` would flip every submodule.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def influence_mode(model: nn.Module):
    """Float32, eval mode, eager attention, unwrapped; restores the model's mode afterwards.

    A model whose parameters are not float32 (fp16/bf16 training) is deep-copied to float32, so
    the trained weights are never changed. A caller's ``torch.autocast`` region (any device
    type) is left for the block (:func:`~hf_pairdots.saliency.autocast_disabled`), so the maths
    inside is float32 too, and comes back afterwards. The input-embedding hooks of gradient
    checkpointing are suspended (:func:`~hf_pairdots.saliency.suspend_input_require_grads`).
    Yields the model.
    """
    model = unwrap_model(model)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    config = getattr(model, "config", None)
    old_attn = getattr(config, "_attn_implementation", None)
    if old_attn not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # SDPA/flash have no double backward (case C06)
    try:
        with eval_mode(model), suspend_input_require_grads(model), autocast_disabled():
            yield model
    finally:
        if old_attn not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(old_attn)


# ---------------------------------------------------------------------------------------------
# How the training loss depends on θ_S
# ---------------------------------------------------------------------------------------------

class Objective:
    """The training loss L(z; θ_S) (cross-entropy, float32) as a function of the flat θ_S.

    ``prepare(batch)`` turns a tokenised batch with ``labels`` (on any device) into what
    ``per_example_loss`` reads, on :attr:`device`. Two implementations:
    :class:`FullModelObjective` (any model, any subset) and :class:`CachedTopObjective` (BERT
    family, ``"top"`` subset, features cached).

    Attributes:
        device: the model's device (:func:`~hf_pairdots.saliency.model_device`); ``theta``, the
            prepared batches and every product live there.
    """

    vectorized = False
    #: Prepared rows are independent and unpadded (cached features): batches may be regrouped into
    #: larger blocks and mini-batches drawn row by row (see :class:`PreparedData`).
    rowwise = False

    def __init__(self, model: nn.Module, params: ParameterSet):
        self.model = model
        self.params = params
        self.device = model_device(model)
        self.theta = params.flat()

    def prepare(self, batch: dict) -> dict:
        raise NotImplementedError

    def prepare_many(self, batches: Sequence[dict]) -> list[dict]:
        """``prepare`` for every batch, each keeping its ``"index"`` (subclasses may share one
        buffer across batches and regroup them)."""
        return [dict(self.prepare(batch), index=batch["index"]) for batch in batches]

    def per_example_loss(self, theta: Tensor, batch: dict) -> Tensor:
        raise NotImplementedError

    def mean_loss(self, theta: Tensor, batch: dict) -> Tensor:
        return self.per_example_loss(theta, batch).mean()

    def saliency_gradients(self, batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]], *,
                           mode: str = "gradient", target: str = "prob") -> Tensor:
        """∇θ w_y(e) of Eq. 5 for several measurements on ONE tokenised text, ``(k, P)`` on
        :attr:`device`: row b is the gradient of the saliency of ``token_positions[b]`` for
        ``labels[b]`` (:func:`saliency_measurement`). ``batch``: the text's inputs, ``(1, L)``
        tensors on any device; a position listed twice counts twice. Cost here: k x (forward,
        backward, double backward) of the full model (:func:`saliency_measurement_gradient`);
        :class:`CachedTopObjective` is cheaper.

        Raises:
            ValueError: no label, ``labels`` and ``token_positions`` of different lengths, or a
                batch of more than one text.
        """
        _check_measurement_rows(batch, labels, token_positions)
        return torch.stack([saliency_measurement_gradient(self.model, self.params, batch, y, positions, mode=mode,
                                                          target=target)
                            for y, positions in zip(labels, token_positions)])


class FullModelObjective(Objective):
    """Loss through the whole model. Cost per example: a full forward (JVP) or HVP pass.

    Prepared batches are the token tensors moved to the model's device (n x L integers)."""

    def prepare(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def per_example_loss(self, theta: Tensor, batch: dict) -> Tensor:
        with first_position_only(self.model):  # the last feed-forward block on position 0 only (BERT family)
            logits = torch.func.functional_call(self.model, self.params.unflatten(theta), args=(),
                                                kwargs=model_inputs(batch, self.device), strict=False).logits
        return F.cross_entropy(logits.float(), batch["labels"].to(logits.device), reduction="none")


class CachedTopObjective(Objective):
    """Loss through :class:`~hf_pairdots.features.TopHead` on cached features (BERT family).

    ``prepare`` runs the bottom of the model once (one forward pass, no gradient); after that a
    loss, JVP or HVP touches only the top feed-forward block, pooler and classifier, or only
    the pooler and classifier when θ_S lies in them (the ``"head"`` preset: the features are
    then the pooler's input), or only the classifier (``"classifier"``: the pooled output).
    """

    vectorized = True
    rowwise = True

    def __init__(self, model: nn.Module, params: ParameterSet):
        super().__init__(model, params)
        # the highest cut whose modules hold θ_S
        cut = next((c for c in reversed(CUTS) if set(params.names) <= TopHead(model, c).parameter_names()), "ffn")
        self.head = TopHead(model, cut)
        outside = set(params.names) - self.head.parameter_names()
        if outside:
            raise ValueError(f"parameters outside the cached top: {sorted(outside)[:3]}...; use FullModelObjective")

    def prepare(self, batch: dict) -> dict:
        return {"features": compute_features(self.model, batch, cut=self.head.cut), "labels": batch["labels"].to(self.device)}

    def prepare_many(self, batches: Sequence[dict]) -> list[dict]:
        """The features of all batches written into ONE ``(N, H)`` buffer, returned as blocks of
        at most :data:`BLOCK_ROWS` rows (views of the buffer, with their ``labels`` and ``index``).

        One allocation instead of one small long-lived tensor per batch, and the forward passes
        run longest batch first (``prepare_data`` sorts by length), so each pass's temporaries fit
        in memory the previous, larger pass freed. Otherwise the C heap grows with N (measured:
        peak +90 MB from N = 500 to 2,000 at max length 64) though the features are H floats each.
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

    def per_example_loss(self, theta: Tensor, batch: dict) -> Tensor:
        logits = self._logits(theta, batch["features"])
        return F.cross_entropy(logits, batch["labels"].to(self.device), reduction="none")

    def _logits(self, theta: Tensor, features: Tensor) -> Tensor:
        named = {"model." + n: t for n, t in self.params.unflatten(theta).items()}
        return torch.func.functional_call(self.head, named, (features,), strict=False).float()

    def saliency_gradients(self, batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]], *,
                           mode: str = "gradient", target: str = "prob") -> Tensor:
        """∇θ w_y(e) of Eq. 5, ``(k, P)``, as :meth:`Objective.saliency_gradients` but with one
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
        if mode not in ("gradient", "grad_x_input"):
            return super().saliency_gradients(batch, labels, token_positions, mode=mode, target=target)
        _check_measurement_rows(batch, labels, token_positions)
        with torch.inference_mode(False), torch.enable_grad():  # even inside a caller's no_grad or inference_mode
            return self._saliency_gradients(batch, labels, token_positions, mode, target)

    def _saliency_gradients(self, batch, labels, token_positions, mode, target) -> Tensor:
        k = len(labels)
        # clone: tensors made under inference_mode cannot be saved for backward
        inputs = {key: t.expand(k, *t.shape[1:]).clone() for key, t in model_inputs(batch, self.device).items()}
        mask = torch.zeros(k, _sequence_length(inputs), 1, device=self.device)
        for b, positions in enumerate(token_positions):
            for position in positions:  # summed, as the general route sums the listed saliencies
                mask[b, position] += 1.0
        step = torch.zeros(k, device=self.device, requires_grad=True)

        def along_d(module, args, output):  # e + s_b d_b for row b: d h_b / d s_b at s = 0 is J_h(e) d_b
            direction = mask if mode == "gradient" else mask * output.detach()
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
            score = lambda x: label_score(self._logits(theta, x[None]), y[b:b + 1], target)[0]  # noqa: E731
            return torch.func.grad(score)(h[b].detach()) @ u[b]

        return torch.stack([torch.func.grad(measurement)(self.theta, b) for b in range(k)])


def _check_measurement_rows(batch: dict, labels: Sequence[int], token_positions: Sequence[Sequence[int]]) -> None:
    rows = {len(t) for key, t in batch.items() if key in INPUT_KEYS}
    if rows != {1}:
        raise ValueError(f"saliency_gradients takes one tokenised text; got a batch of {sorted(rows)} rows")
    if not labels or len(labels) != len(token_positions):
        raise ValueError(f"saliency_gradients: {len(labels)} labels and {len(token_positions)} position lists; "
                         "give one (non-empty) list of each, one entry per measurement")


def make_objective(model: nn.Module, params: str | Sequence[str] | ParameterSet = "head") -> Objective:
    """The cheapest exact objective for ``params``: cached top when possible, else the full model."""
    pset = params if isinstance(params, ParameterSet) else select_parameters(model, params)
    if supports_top_head(model) and set(pset.names) <= TopHead(model).parameter_names():
        return CachedTopObjective(model, pset)
    return FullModelObjective(model, pset)


# ---------------------------------------------------------------------------------------------
# Training data, prepared once
# ---------------------------------------------------------------------------------------------

#: Rows per block of a row-wise objective's prepared data (:meth:`CachedTopObjective.prepare_many`):
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
        rowwise: the batches hold independent, unpadded rows (``Objective.rowwise``), so
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


PAD_MULTIPLE = 8


def tokenize(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int,
             pad_to_multiple_of: int | None = PAD_MULTIPLE, rows: Sequence[int] | None = None) -> dict:
    """Padded CPU tensors for a batch of texts, whitespace words kept one-to-one (``word_ids``);
    :meth:`Objective.prepare` moves them to the model's device. ``rows``: the caller's row index
    of each text, named in the ValueError of an empty text (see
    :func:`~hf_pairdots.saliency.encode_words`).

    Lengths are padded to a multiple of :data:`PAD_MULTIPLE`: with length-sorted batches every
    batch would otherwise have its own shape, and the CPU kernels' per-shape caches made peak
    memory grow with the number of batches (measured +43 % from N = 500 to 2,000, now < 10 %).
    """
    enc, _ = word_encoding(tokenizer, texts, max_length, pad_to_multiple_of=pad_to_multiple_of, rows=rows)
    batch = dict(enc)
    batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return batch


def prepare_data(objective: Objective, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
                 batch_size: int = 32, max_length: int = 128, rows: Sequence[int] | None = None) -> PreparedData:
    """Tokenise, sort by length, batch and ``prepare`` the training set.

    ``rows``: the caller's row index of each text (default its position), named in errors: the
    :class:`~hf_pairdots.explain.Explainer` passes the dataset rows it kept. Batches' ``"index"``
    are positions in ``texts`` whatever ``rows`` is.

    Cost: for :class:`CachedTopObjective`, one forward pass over the data (about a third of a
    training epoch); memory n x H floats. For :class:`FullModelObjective`, tokenisation only.

    Raises:
        ValueError: a label outside the model's labels, or an empty or whitespace-only text
            (naming the row; leave such rows out, as the Explainer does).
    """
    rows = list(range(len(texts))) if rows is None else list(rows)
    _check_labels(objective.model, torch.as_tensor(list(labels)), rows)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i].split()))
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    batches = [dict(tokenize(tokenizer, [texts[i] for i in idx], [labels[i] for i in idx], max_length,
                             rows=[rows[i] for i in idx]), index=torch.as_tensor(idx)) for idx in chunks]
    return PreparedData(objective.prepare_many(batches), len(texts), rowwise=objective.rowwise)


def full_hvp(objective: Objective, data: PreparedData):
    """``V (Q, P) -> H V`` for the Hessian of the mean loss over all of ``data``. Cost: one pass."""
    return lambda v: _mean_hvp(objective, data.batches, v)


def _mean_hvp(objective: Objective, batches: list[dict], v: Tensor) -> Tensor:
    """HVP with the Hessian of the mean loss over the examples of ``batches``."""
    total = sum(len(b["labels"]) for b in batches)
    out = torch.zeros_like(v)
    for batch in batches:
        out += len(batch["labels"]) / total * _batch_hvp(objective, batch, v)
    return out


def _per_row(objective: Objective, product, fn, v: Tensor) -> Tensor:
    """``product(fn, θ, v)`` for the rows of ``v``: vectorised (vmap) when the objective allows it."""
    if objective.vectorized:
        return product(fn, objective.theta, v)
    return torch.stack([product(fn, objective.theta, row) for row in v])


def _batch_hvp(objective: Objective, batch: dict, v: Tensor) -> Tensor:
    return _per_row(objective, hvp, lambda theta: objective.mean_loss(theta, batch), v)


# ---------------------------------------------------------------------------------------------
# Measurements m(θ) and their gradients
# ---------------------------------------------------------------------------------------------

def loss_measurement_gradient(objective: Objective, batch: dict) -> Tensor:
    """∇θ L(z_test; θ) for each test example of a prepared batch, shape ``(Q, P)``, on the
    parameters' device.

    With it, I(z, L_test) = -∇θL_testᵀ H⁻¹ ∇θL(z) is Koh & Liang's I_up,loss.
    Cost: Q backward passes.
    """
    return torch.stack([
        torch.func.grad(lambda th, i=i: objective.per_example_loss(th, batch)[i])(objective.theta)
        for i in range(len(batch["labels"]))
    ])


def saliency_measurement(model: nn.Module, params: ParameterSet, batch: dict, label: int,
                         token_positions: Sequence[int], *, mode: str = "gradient", target: str = "prob"):
    """m(θ) = saliency of the tokens ``token_positions`` of one test example for ``label``.

    The measurement of Eq. 5: the (summed) token saliency s(x_t) = Σ_j ∂S_y/∂e_t,j of
    Sec. 3.1, as a function of the flat θ_S, ``(P,) -> ()``; a word's measurement is the sum of
    its word pieces' saliencies. ``batch`` holds one example (tensors ``(1, L)``, on any device:
    moved to the model's). ``θ`` must live on the model's device.
    """
    block = find_embedding_block(model)
    device = model_device(model)
    y = torch.tensor([label], device=device)
    positions = torch.as_tensor(list(token_positions), dtype=torch.long, device=device)

    def measure(theta: Tensor) -> Tensor:
        grad, emb, _ = embedding_gradient(model, batch, y, target=target, params=params.unflatten(theta), block=block)
        return token_saliency(grad, emb, mode)[0, positions].sum()
    return measure


def saliency_measurement_gradient(model: nn.Module, params: ParameterSet, batch: dict, label: int,
                                  token_positions: Sequence[int], **kwargs) -> Tensor:
    """∇θ w_y(e) of Eq. 5, shape ``(P,)`` on the parameters' device: gradient of
    :func:`saliency_measurement`.

    Cost: one forward, one backward and one double-backward pass of the full model.
    """
    measure = saliency_measurement(model, params, batch, label, token_positions, **kwargs)
    return torch.func.grad(measure)(params.flat())


# ---------------------------------------------------------------------------------------------
# s_test
# ---------------------------------------------------------------------------------------------

CG_PASSES = 12
"""Full-data HVP passes that :func:`choose_solver` expects of CG: CG to tol 1e-3 plus the
residual check took 10, to 1e-4 12, on MiniLM-L6 / SST-2 with automatic damping."""


def choose_solver(options: SolverOptions, data: PreparedData) -> SolverOptions:
    """``solver="auto"`` made concrete (other solvers are returned unchanged).

    LiSSA when an option only LiSSA reads is set (``scale``, ``repeat > 1``, ``keep_repeats``).
    Otherwise CG when its estimated cost, :data:`CG_PASSES` passes over the n training examples,
    is at most LiSSA's, ``depth x batch_size x repeat`` examples, and LiSSA when it is not (its
    cost does not grow with n). At the defaults CG is chosen up to n = 2,133. Both cost about
    the same per example and HVP direction; CG is also deterministic and more accurate for the
    same work (0.1 % against 3.4 % relative error on MiniLM-L6, benchmarks/RESULTS.md (c)).
    """
    if options.solver != "auto":
        return options
    if options.scale is not None or options.repeat > 1 or options.keep_repeats:
        return dataclasses.replace(options, solver="lissa")
    cg_cost = CG_PASSES * data.size
    lissa_cost = options.depth * options.batch_size * options.repeat
    return dataclasses.replace(options, solver="cg" if cg_cost <= lissa_cost else "lissa")


def resolve_damping_scale(objective: Objective, data: PreparedData,
                          options: SolverOptions) -> tuple[SolverOptions, dict]:
    """Fill in automatic ``damping``/``scale`` from Lanczos eigenvalue estimates (case C01), and
    check a user-set ``damping`` against λ_min.

    λ_min from the full-data Hessian; λ_max from three sampled mini-batch Hessians (the LiSSA
    recursion multiplies by those, and their spectra are wider). λ and σ then follow
    :func:`~hf_pairdots.ihvp.auto_damping_scale`, for LiSSA including the requirement that the
    recursion converges within ``depth``. A user-set damping must satisfy λ_min + λ > 0
    (:func:`~hf_pairdots.ihvp.check_positive_definite`, for every solver alike), except with
    ``solver="exact"``, which checks the exact spectrum of its explicit Hessian instead and needs
    no estimate. The Lanczos λ_min lies inside the spectrum (it can only be too high), so the
    check may pass a system whose true λ_min is slightly lower; CG's curvature test backs it up.

    Returns ``(options with both set, estimates)`` (``estimates``: ``lambda_min``,
    ``lambda_max`` and for LiSSA ``lambda_max_minibatch``; empty when nothing was estimated).
    Cost: about 2-10 x power_iters HVPs on the full data (5 s at n = 2,000 for MiniLM-L6's
    head, 3-4 CG solves of 8 queries), plus, for an automatic LiSSA scale, 3 x that on
    mini-batches. ``solver="auto"`` is made concrete first (:func:`choose_solver`).

    Raises:
        IndefiniteHessianError: a user-set ``damping`` is at most -λ_min (a ``ValueError``).
    """
    options = choose_solver(options, data)
    numel = objective.params.numel
    if options.damping is not None and options.solver == "exact":
        return options, {}  # exact_solve checks the eigenvalues of the explicit Hessian
    gen = torch.Generator().manual_seed(options.seed)
    device = objective.theta.device
    lo, hi = ihvp.extreme_eigenvalues(full_hvp(objective, data), numel, iters=options.power_iters, seed=options.seed,
                                      device=device, dtype=objective.theta.dtype)
    estimates = {"lambda_min": lo, "lambda_max": hi}
    if options.damping is not None:
        ihvp.check_positive_definite(lo, options.damping)
        if options.scale is not None or options.solver != "lissa":
            return options, estimates
    top = hi
    if options.solver == "lissa":
        for k in range(3):
            batches = data.sample(gen, options.batch_size)
            top = max(top, ihvp.extreme_eigenvalues(lambda u, b=batches: _mean_hvp(objective, b, u), numel,
                                                    iters=options.power_iters, seed=options.seed + k + 1,
                                                    device=device, dtype=objective.theta.dtype)[1])
        estimates["lambda_max_minibatch"] = top
    depth = options.depth if options.solver == "lissa" else None
    damping, scale = ihvp.auto_damping_scale(lo, top, damping=options.min_damping, depth=depth)
    damping = damping if options.damping is None else options.damping
    scale = ihvp.auto_damping_scale(0.0, top, damping=damping)[1] if options.scale is None else options.scale
    return dataclasses.replace(options, damping=damping, scale=scale), estimates


def lowrank_hessian(objective: Objective, data: PreparedData, options: SolverOptions) -> ihvp.LowRankHessian:
    """The top-``options.rank`` eigenpairs of the full-data Hessian, for the ``"lowrank"`` solver.

    Compute once, pass to every :func:`compute_s_test` call. The eigenvectors ``(P, rank)`` live
    on the parameters' device. Cost: 3 full-data HVPs of ``rank`` vectors each (block Lanczos,
    :func:`~hf_pairdots.ihvp.top_eigenpairs`); memory 3 x rank x P floats while it runs.
    """
    return ihvp.top_eigenpairs(full_hvp(objective, data), objective.params.numel, options.rank, seed=options.seed,
                               device=objective.theta.device, dtype=objective.theta.dtype)


def compute_s_test(objective: Objective, data: PreparedData, v: Tensor, options: SolverOptions | None = None,
                   residual_examples: int = 256, lowrank: ihvp.LowRankHessian | None = None,
                   eigenvalues: dict | None = None) -> ihvp.IHVPResult:
    """s_test = (H + λI)⁻¹ v for ``v`` of shape ``(Q, P)`` (rows: ∇θ m of Q measurements; App. B,
    the vector of Eq. 4-5, whose scores are I(z, m) = -s_testᵀ ∇θ L(z)).

    ``v`` may live on any device; it is moved to the parameters' device, where the whole solve
    runs. Returns an :class:`~hf_pairdots.ihvp.IHVPResult` with ``x`` of shape ``(Q, P)`` on the
    parameters' device (so are the per-repeat solutions below) and diagnostics holding λ, σ,
    the eigenvalue estimates (when made here: for automatic damping or scale, or to check a
    user-set damping) and, per query, the relative residual
    ||(H + λI)s - v|| / ||v||, measured with the full-data Hessian for row-wise (cached) data and
    otherwise with the Hessian of ``residual_examples`` sampled training examples (all when the
    data is smaller; a sample's own Hessian differs from H, so read that value as an upper
    bound blurred by sampling). With LiSSA
    and ``options.keep_repeats`` also ``diagnostics["repeats"]``, the ``(R, Q, P)`` per-repeat
    solutions (a tensor: drop it before writing the diagnostics as JSON), for the top-k
    stability of :mod:`hf_pairdots.stability`.

    Each row is solved independently of the others: LiSSA's mini-batches are drawn from a
    generator seeded by ``options.seed`` whatever Q is, and so is the residual's sample, so row q
    of a solve with Q rows equals the solve of that row alone (up to float32 rounding of the
    vectorised products). The per-row cache of :class:`hf_pairdots.explain.Explainer` relies on it.

    Definiteness: every solver refuses an indefinite H + λI alike, with one error
    (:func:`~hf_pairdots.ihvp.check_positive_definite`): a user-set damping is checked against
    the Lanczos λ_min of :func:`resolve_damping_scale` before any solver runs (``exact`` checks
    the exact spectrum of its explicit Hessian instead), then CG and the low-rank closed form
    check what they see themselves.

    ``eigenvalues``: the estimates :func:`resolve_damping_scale` returned with ``options`` (which
    must then have ``damping``, and for LiSSA ``scale``, set): the definiteness check reuses their
    ``lambda_min`` instead of new Lanczos runs (the :class:`~hf_pairdots.explain.Explainer`
    resolves once and passes them to every solve). ``None``: resolved here.

    Cost: LiSSA depth x repeat mini-batch HVPs (Q vectors each); CG up to cg_max_iter full-data
    HVPs; exact P full-data HVPs and an O(P³) eigenvalue decomposition and solve; low-rank, beyond
    ``lowrank`` (computed here when not given, see :func:`lowrank_hessian`), one full-data HVP per
    CG iteration when ``options.lowrank_refine`` (preconditioned by the factor: fewer iterations
    than plain CG) and none otherwise; plus, without ``eigenvalues``, :func:`resolve_damping_scale`
    (also for a user-set damping, to check it; not for ``exact``).

    Raises:
        IndefiniteHessianError: H + λI is not positive definite (a ``ValueError``; names
            ``damping`` and the value to exceed).
        LissaDivergenceError: the LiSSA recursion diverged (names ``scale`` and ``damping``).
        FloatingPointError: s_test is not finite.
    """
    options = choose_solver(options or SolverOptions(), data)
    v = v.to(objective.theta.device)
    estimates = {}
    if eigenvalues is None or options.damping is None or (options.solver == "lissa" and options.scale is None):
        options, estimates = resolve_damping_scale(objective, data, options)
    elif "lambda_min" in eigenvalues:
        ihvp.check_positive_definite(eigenvalues["lambda_min"], options.damping)
    full = full_hvp(objective, data)
    gen = torch.Generator().manual_seed(options.seed)
    if options.solver == "lissa":
        result = ihvp.lissa(lambda h, t: _mean_hvp(objective, data.sample(gen, options.batch_size), h), v,
                            damping=options.damping, scale=options.scale, depth=options.depth, repeat=options.repeat,
                            keep_repeats=options.keep_repeats)
    elif options.solver == "cg":
        result = ihvp.conjugate_gradient(full, v, damping=options.damping, tol=options.cg_tol,
                                         max_iter=options.cg_max_iter)
    elif options.solver == "lowrank":
        result = ihvp.lowrank_solve(lowrank or lowrank_hessian(objective, data, options), v, damping=options.damping,
                                    hvp=full if options.lowrank_refine else None, tol=options.cg_tol,
                                    max_iter=options.cg_max_iter)
    else:
        result = ihvp.exact_solve(ihvp.explicit_hessian(full, objective.params.numel, dtype=v.dtype, device=v.device),
                                  v, damping=options.damping)
    result.diagnostics.update(estimates)
    # Row-wise (cached) data: the full-data Hessian costs one cheap pass. A 256-row sample's Hessian
    # made even an exact CG solve read 0.14-0.17 on MiniLM (all rows: < 1e-4).
    check = data.batches if data.rowwise else data.sample(torch.Generator().manual_seed(options.seed + 1),
                                                          residual_examples)
    result.diagnostics["relative_residual"] = ihvp.relative_residual(
        lambda u: _mean_hvp(objective, check, u), result.x, v, options.damping)
    if not torch.isfinite(result.x).all():
        raise FloatingPointError(f"s_test is not finite ({options.solver}); see the diagnostics: {result.diagnostics}")
    return result


# ---------------------------------------------------------------------------------------------
# Training-side scores (streamed; never an n x P matrix)
# ---------------------------------------------------------------------------------------------

def _loss_directional(objective: Objective, batch: dict, s_test: Tensor) -> Tensor:
    """``(Q, B)``: ∇θL(z_i)ᵀ s_q for the examples of a prepared batch."""
    return _per_row(objective, directional_derivatives, lambda theta: objective.per_example_loss(theta, batch), s_test)


def train_influence(objective: Objective, data: PreparedData, s_test: Tensor) -> Tensor:
    """I(z_i, m_q) for every training example (Eq. 4 chained with m; Eq. 5 for saliency).

    Args:
        s_test: ``(Q, P)``, on any device (moved to the parameters').

    Returns:
        ``(Q, n)`` influence scores in the order of the texts given to :func:`prepare_data`, on
        the CPU (accumulated on the model's device, copied once at the end).
        Cost: one forward-mode pass over the prepared data per query (vectorised over Q for the
        cached top); memory: one batch at a time (case C12).
    """
    s_test = s_test.to(objective.theta.device)
    out = torch.empty(s_test.shape[0], data.size, dtype=s_test.dtype, device=s_test.device)
    for batch in data.batches:
        with torch.no_grad():
            out[:, batch["index"].to(out.device)] = -_loss_directional(objective, batch, s_test)
    return out.cpu()


# ---------------------------------------------------------------------------------------------
# Self-influence: the training examples the model finds surprising
# ---------------------------------------------------------------------------------------------

EXACT_MAX_PARAMS = 4096
"""Largest θ_S for which :func:`self_influence_solver` turns ``solver="auto"`` into the exact
solver: the explicit Hessian then costs P HVP directions over the data and a P x P float64 solve
(128 MB at 4,096), less than CG's ~10 passes with one direction per training example."""

BLOCK_FLOATS = 2 ** 24
"""Per-example gradients :func:`self_influence` holds at once (rows x P floats, 64 MB in float32):
each block of rows is one :func:`compute_s_test` call."""


@dataclass
class SelfInfluence:
    """Self-influence of every training example (:func:`self_influence`).

    Attributes:
        scores: ``(n,)`` on the CPU, in the order of the texts given to :func:`prepare_data`
            (``(len(rows),)`` in the order of ``rows`` when only those were scored).
        diagnostics: ``solver``, ``damping`` (resolved), the eigenvalue estimates when damping was
            automatic, ``block_rows`` (rows per solve) and ``max_relative_residual`` (the worst row's
            ||(H + λI)s - ∇L(z)|| / ||∇L(z)||).
    """

    scores: Tensor
    diagnostics: dict


def example_gradients(objective: Objective, batch: dict) -> Tensor:
    """∇θ L(z_i) for the examples of a prepared batch, ``(B, P)`` on the parameters' device.

    Cost: B backward passes, vectorised (``torch.func.jacrev``) for a vectorised objective (the
    cached top), one at a time otherwise (:func:`loss_measurement_gradient`); memory B x P floats.
    """
    if not objective.vectorized:
        return loss_measurement_gradient(objective, batch)
    with torch.inference_mode(False), torch.enable_grad():
        return torch.func.jacrev(lambda theta: objective.per_example_loss(theta, batch))(objective.theta)


def mean_loss_gradient(objective: Objective, data: PreparedData) -> Tensor:
    """∇θ of the mean loss over ``data``, ``(P,)`` on the parameters' device: the ∇θ m of
    Koh & Liang's influence on a whole split's loss (e.g. the dev loss). Cost: one backward pass
    over the data; memory one batch and one ``(P,)`` vector."""
    out = torch.zeros_like(objective.theta)
    with torch.inference_mode(False), torch.enable_grad():
        for batch in data.batches:
            weight = len(batch["labels"]) / data.size
            out += weight * torch.func.grad(lambda theta: objective.mean_loss(theta, batch))(objective.theta)
    return out


def self_influence_solver(objective: Objective, data: PreparedData,
                          options: SolverOptions | None = None) -> tuple[SolverOptions, dict]:
    """``options`` made concrete for :func:`self_influence`: ``solver="auto"`` becomes ``"exact"``
    when θ_S has at most :data:`EXACT_MAX_PARAMS` parameters (e.g. ``params="classifier"``, 770
    for MiniLM-L6) and no LiSSA-only option is set, else :func:`choose_solver` decides; automatic
    damping is resolved once (:func:`resolve_damping_scale`). Returns ``(options, estimates)``."""
    options = options or SolverOptions()
    lissa_only = options.scale is not None or options.repeat > 1 or options.keep_repeats
    if options.solver == "auto" and objective.params.numel <= EXACT_MAX_PARAMS and not lissa_only:
        options = dataclasses.replace(options, solver="exact")
    return resolve_damping_scale(objective, data, options)


def self_influence(objective: Objective, data: PreparedData, options: SolverOptions | None = None, *,
                   rows: Sequence[int] | None = None, residual_examples: int = 256) -> SelfInfluence:
    """Self-influence of every training example: ∇θL(z_i)ᵀ (H + λI)⁻¹ ∇θL(z_i).

    Sign: ≥ 0 whenever H + λI is positive definite (automatic damping makes it so). It is minus
    the influence of z_i on its own loss, I(z_i, L(z_i)) of Eq. 4: up-weighting z_i lowers its
    loss by that much. Large means the model finds z_i surprising: its loss gradient points where
    the rest of the data gives little curvature, which is typical of a mislabelled, atypical or
    ambiguous example ("training examples the model finds suspicious"; Koh & Liang 2017, Sec. 5.4).

    The per-example gradients are streamed in blocks of ``BLOCK_FLOATS // P`` rows (rows from
    several batches are merged); each block is one :func:`compute_s_test` call with the block's
    gradients as its Q rows, and each score is the dot product of a row with its own solution.
    ``options`` is made concrete once by :func:`self_influence_solver` (exact for small θ_S).
    ``rows``: score only these examples (positions in the order given to :func:`prepare_data`;
    the Hessian is still that of all of ``data``); ``scores`` is then ``(len(rows),)`` in their order.

    Cost: n (or len(rows)) backward passes for the gradients, plus one solve per block: exact, one explicit
    Hessian (P HVP directions over the data) and a P x P solve per block (one block for
    n x P ≤ 2^24, e.g. n ≤ 21,000 for P = 770); CG, about 10 full-data HVP passes per row, i.e.
    n times the cost of one query's s_test (quadratic in n: 500 rows of MiniLM-L6's ``"head"``,
    P = 148,610, against a Hessian of 2,000 took 176 s on 2 CPU cores; ``"classifier"``, exact,
    2.3 s for all 2,000); plus the residual check of every row.
    Memory: one block of gradients and the solver's work vectors (a few x block x P floats).

    Raises:
        LissaDivergenceError, FloatingPointError: from :func:`compute_s_test`.
    """
    options, estimates = self_influence_solver(objective, data, options)
    block = max(1, BLOCK_FLOATS // objective.params.numel)
    wanted = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    scores = torch.empty(data.size, dtype=objective.theta.dtype)
    residuals = []
    for index, gradients in _gradient_blocks(objective, data, block, wanted):
        result = compute_s_test(objective, data, gradients, options, residual_examples)
        scores[index] = (gradients * result.x).sum(1).cpu()
        residuals += result.diagnostics["relative_residual"]
    diagnostics = {"solver": options.solver, "damping": options.damping, **estimates, "block_rows": block,
                   "max_relative_residual": max(residuals, default=0.0)}
    return SelfInfluence(scores if wanted is None else scores[wanted], diagnostics)


def _gradient_blocks(objective: Objective, data: PreparedData, rows: int, wanted: Tensor | None = None):
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


def example_influence(objective: Objective, tokenizer, texts: Sequence[str], labels: Sequence[int],
                      s_test: Tensor, *, max_length: int = 128, inputs_embeds: Tensor | None = None) -> Tensor:
    """I(z, m_q) for a handful of (possibly perturbed) examples given as texts, ``(Q, len(texts))``
    on the CPU. ``s_test`` may live on any device (moved to the parameters').

    ``inputs_embeds`` ``(len(texts), L, H)``: embeddings to use instead of the word-embedding
    lookup, for the texts as :func:`~hf_pairdots.saliency.encode_words` tokenises them (no
    extra padding), on any device. Raises ``ValueError`` when their shape does not match that
    tokenisation.
    """
    return _prepared_influence(objective, _prepare_examples(objective, tokenizer, texts, labels, max_length,
                                                             inputs_embeds), s_test)


def _prepare_examples(objective: Objective, tokenizer, texts, labels, max_length: int, inputs_embeds=None) -> dict:
    # No extra padding: these batches (a text and its variants) are about one length already.
    batch = tokenize(tokenizer, texts, labels, max_length, None)
    if inputs_embeds is not None and inputs_embeds.shape[:2] != batch["input_ids"].shape:
        raise ValueError(f"inputs_embeds has shape {tuple(inputs_embeds.shape)}; the texts tokenise to "
                         f"{tuple(batch['input_ids'].shape)} (batch, length)")
    if inputs_embeds is not None:
        batch["inputs_embeds"] = inputs_embeds
        del batch["input_ids"]
    with torch.no_grad():
        return objective.prepare(batch)


def _prepared_influence(objective: Objective, prepared: dict, s_test: Tensor) -> Tensor:
    with torch.no_grad():
        return (-_loss_directional(objective, prepared, s_test.to(objective.theta.device))).cpu()


def perturbation_influence(objective: Objective, tokenizer, text: str, label: int, variants: Sequence[str],
                           s_test: Tensor, *, max_length: int = 128) -> Tensor:
    """I(z, z̃, m) = I(z̃, m) - I(z, m) for each perturbed text z̃ of z (Eq. 6-7), ``(Q, V)`` on the CPU.

    The perturbed example keeps z's label. Positive: replacing z by z̃ raises m.
    Cost: one forward-mode pass over V + 1 examples.
    """
    scores = example_influence(objective, tokenizer, [text, *variants], [label] * (len(variants) + 1),
                               s_test, max_length=max_length)
    return scores[:, 1:] - scores[:, :1]


ERASERS = ("unk", "mask", "zero")


def erased_variants(tokenizer, text: str, eraser: str = "unk") -> list[str]:
    """The texts z̃(t, UNK) of Eq. 8: each whitespace word replaced by the tokenizer's UNK
    (``"unk"``) or mask (``"mask"``) token. Tokenizers without that token raise ``ValueError``
    naming the alternatives (case C22); ``"zero"`` needs no token (see :func:`word_influence`)."""
    token = {"unk": tokenizer.unk_token, "mask": tokenizer.mask_token}.get(eraser)
    if token is None:
        raise ValueError(f"eraser={eraser!r}: the tokenizer has no such token; use one of "
                         f"{[e for e in ERASERS if e == 'zero' or getattr(tokenizer, e + '_token', None)]}")
    words = text.split()
    return [" ".join(words[:t] + [token] + words[t + 1:]) for t in range(len(words))]


def word_influence(objective: Objective, tokenizer, text: str, label: int, s_test: Tensor, *,
                   eraser: str = "unk", max_length: int = 128, prepared: dict | None = None) -> Tensor:
    """I(x_t, m) = I(z, m) - I(z̃(t, UNK), m) for each whitespace word x_t of z (Eq. 8), ``(Q, W)``
    on the CPU.

    ``eraser``: ``"unk"`` (the paper), ``"mask"``, or ``"zero"`` (the word's word-piece
    embeddings set to zero: the paper's footnote 2). Positive: the word's presence raises m.
    Only the words with a token in the model's input are erased (the encoding's word ids:
    :func:`~hf_pairdots.saliency.scored_words`); a word past ``max_length``, or one the
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


def prepare_word_variants(objective: Objective, tokenizer, text: str, label: int, *, eraser: str = "unk",
                          max_length: int = 128) -> dict:
    """z and its erased variants z̃(t, ·) of Eq. 8 as one objective-ready batch: what
    :func:`word_influence` scores, independent of s_test. One variant per word with a token in
    the model's input (W' ≤ W words, listed in ``"word_index"``: the encoding's word ids, so a
    word past ``max_length`` or deleted by the normaliser, which would give z itself, has none),
    so W' + 1 rows; for a cached-top objective ``(W' + 1, H)`` features on the model's device.
    Cost: one forward pass over W' + 1 examples. Raises ``ValueError`` for an eraser token the
    tokenizer lacks (case C22)."""
    enc, _ = word_encoding(tokenizer, [text], max_length)
    scored = scored_words(enc)
    labels = [label] * (len(scored) + 1)
    if eraser == "zero":
        rows = _prepare_examples(objective, tokenizer, [text] * len(labels), labels, max_length,
                                 _zeroed_embeddings(objective.model, enc, scored))
    else:
        variants = erased_variants(tokenizer, text, eraser)
        rows = _prepare_examples(objective, tokenizer, [text, *(variants[t] for t in scored)], labels, max_length)
    return {**rows, "word_index": scored}


def _zeroed_embeddings(model: nn.Module, encoding, scored: list[int]) -> Tensor:
    """``(len(scored) + 1, L, H)`` word embeddings of the one text of ``encoding``, row j + 1 with
    the pieces of word ``scored[j]`` zeroed."""
    ids = encoding["input_ids"][:1].expand(len(scored) + 1, -1)
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids.to(model_device(model))).clone()
    word_ids = encoding.word_ids(0)
    for j, t in enumerate(scored):
        emb[j + 1, [p for p, w in enumerate(word_ids) if w == t]] = 0.0
    return emb
