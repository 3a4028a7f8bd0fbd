"""Measurements m(θ) of a test example and their gradients ∇θ m, the left side of Eq. 4-5.

* the measurement objects: :class:`SaliencyMeasurement` (the saliency of a word for a label,
  Eq. 5), :class:`LossMeasurement` (the test loss, Eq. 4 chained: Koh & Liang's I_up,loss) and
  :class:`FunctionMeasurement` (any m(θ_S) of the user's); :func:`measurement_gradients` turns
  several of one tokenised text (:class:`~hf_pairdots.text.EncodedText`) into ∇θ m rows by the
  cheapest exact route;
* :func:`loss_measurement_gradient`: ∇θ L(z_test) for Koh & Liang's I_up,loss (Eq. 4 chained);
* :func:`saliency_measurement` / :func:`saliency_measurement_gradient`: the saliency w_y(e) of
  Eq. 5 as a function of θ_S and its gradient (double backward through Eq. 2);
* :func:`occlusion_measurement_gradient`: ∇θ of the occlusion saliency S_y(x) - S_y(x̃_t), a
  first-order gradient (no double backward).
  :meth:`~hf_pairdots.loss.TrainLoss.saliency_gradients` picks the cheapest exact route for
  several measurements of one text.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .autograd import ParameterSet
from .erasure import erased_inputs
from .modeling import find_embedding_block, model_device
from .saliency import embedding_gradient, label_score, token_saliency

if TYPE_CHECKING:  # for annotations only: loss.py imports this module
    from .loss import TrainLoss
    from .text import EncodedText


@dataclass(frozen=True)
class SaliencyMeasurement:
    """m(θ) = sign x s(x_t) for ``label``: the saliency of word ``word`` of the test text (the sum
    of its word pieces' token saliencies, Sec. 3.1) under reduction ``mode`` and score ``target``
    (:func:`~hf_pairdots.saliency.token_saliency`, :func:`~hf_pairdots.saliency.label_score`), or
    for ``mode="occlusion"`` S_y(x) - S_y(x̃_t) with ``eraser`` (:mod:`~hf_pairdots.erasure`).
    ``sign`` -1 measures -s (``salient_by="magnitude"`` for a word of negative saliency: m = |s|).
    Positive influence on it: up-weighting the training example raises m (Eq. 5)."""

    label: int
    word: int
    mode: str = "gradient"
    target: str = "prob"
    sign: float = 1.0
    eraser: str = "unk"


@dataclass(frozen=True)
class LossMeasurement:
    """m(θ) = L(z_test; θ), the training loss at the test text with label ``label`` (Eq. 4 chained:
    I(z, m) is Koh & Liang's I_up,loss; positive: up-weighting z raises the test loss)."""

    label: int


@dataclass(frozen=True)
class FunctionMeasurement:
    """m(θ) = ``fn(theta)`` for the flat θ_S ``(P,)`` of the training loss (on its device), a
    scalar tensor differentiable by ``torch.func.grad``; the text is not read."""

    fn: Callable[[Tensor], Tensor]


Measurement = SaliencyMeasurement | LossMeasurement | FunctionMeasurement


def measurement_gradients(objective: TrainLoss, encoded: EncodedText, measurements: Sequence[Measurement]) -> Tensor:
    """∇θ m of each measurement of one tokenised test text, ``(k, P)`` on the parameters' device,
    in the order given.

    Saliency measurements with the same mode and target share one
    :meth:`~hf_pairdots.loss.TrainLoss.saliency_gradients` call, which picks the cheapest exact
    route (one Jacobian-vector product below a cached cut for the linear reductions, else a
    double backward per row); an occlusion measurement one forward and one backward pass of two
    rows (:func:`occlusion_measurement_gradient`); a loss measurement one backward pass, a
    function one ``torch.func.grad``.

    Raises:
        ValueError: no measurement, or a saliency measurement of a word with no token in
            ``encoded`` (past ``max_length``, or deleted by the normaliser).
    """
    if not measurements:
        raise ValueError("no measurement to differentiate")
    out: list[Tensor | None] = [None] * len(measurements)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, m in enumerate(measurements):
        if isinstance(m, SaliencyMeasurement):
            if m.word not in encoded.scored:
                raise ValueError(f"word {m.word} ({encoded.words[m.word]!r}) has no token in the model's input")
            if m.mode == "occlusion":
                out[i] = occlusion_measurement_gradient(objective, encoded, m)
            else:
                groups.setdefault((m.mode, m.target), []).append(i)
        elif isinstance(m, LossMeasurement):
            batch = objective.prepare({**encoded.inputs(), "labels": torch.tensor([m.label])})
            out[i] = loss_measurement_gradient(objective, batch)[0]
        else:
            out[i] = torch.func.grad(m.fn)(objective.theta)
    for (mode, target), rows in groups.items():
        ms = [measurements[i] for i in rows]
        grads = objective.saliency_gradients(encoded.inputs(), [m.label for m in ms],
                                             [encoded.positions(m.word) for m in ms], mode=mode, target=target)
        signs = torch.tensor([m.sign for m in ms], device=grads.device)
        for j, i in enumerate(rows):
            out[i] = grads[j] * signs[j]
    return torch.stack(out)


def occlusion_measurement_gradient(objective: TrainLoss, encoded: EncodedText, measurement: SaliencyMeasurement) -> Tensor:
    """∇θ m for the occlusion saliency m(θ) = sign x [S_y(x; θ) - S_y(x̃_t; θ)] of word t
    (``measurement.word``) of one tokenised text, ``(P,)`` on the parameters' device: x̃_t erases
    every word piece of t (:func:`~hf_pairdots.erasure.erased_inputs`), so the gradient is
    ∇θ S_y(x) - ∇θ S_y(x̃_t), first order. Through the objective's own ``prepare`` and ``logits``,
    so a cached-top objective runs the bottom of the network once for both rows.

    Cost: one forward pass of two rows and one backward pass (of θ_S's part).

    Raises:
        ValueError: the word has no token, or an eraser the tokenizer lacks.
    """
    inputs = erased_inputs(objective.model, encoded, [measurement.word], measurement.eraser)
    labels = torch.full((2,), measurement.label)
    with torch.no_grad():
        batch = objective.prepare({**inputs, "labels": labels})

    def m(theta: Tensor) -> Tensor:
        score = label_score(objective.logits(theta, batch), labels, measurement.target, objective.problem_type)
        return measurement.sign * (score[0] - score[1])
    with torch.inference_mode(False), torch.enable_grad():  # even inside a caller's no_grad or inference_mode
        return torch.func.grad(m)(objective.theta)


def loss_measurement_gradient(objective: TrainLoss, batch: dict) -> Tensor:
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
