"""Cached top-of-network features: train-side losses without re-running the bottom layers.

For a BERT-family sequence classifier (BERT, RoBERTa, XLM-R, ELECTRA, MPNet, DeBERTa-v2:
:attr:`~hf_pairdots.modeling.ModelLayout.has_top_head`), only the first ([CLS] / <s>) position
of the last layer reaches the classifier, and the last layer's feed-forward block acts on each position alone.
So with θ_S = {last feed-forward block, pooler, classifier} (the ``"top"`` preset of
:func:`hf_pairdots.autograd.select_parameters`), the loss of a training example depends on θ_S
only through one H-vector per example: the last layer's attention output at position 0.
With θ_S = {pooler, classifier} (the ``"head"`` preset; RoBERTa's ``dense`` + ``out_proj``
head) the cut is higher still: the last layer's output at position 0 (the head's input), and
the feed-forward block is not re-run.
:func:`compute_features` computes the features once (one forward pass per example, no
gradient), and :class:`TopHead` maps them to logits with the model's own modules, so HVPs and
directional derivatives cost a few small matrix products instead of a full forward/backward pass.

:func:`top_head_test` of the tests checks ``TopHead(features) == model(...).logits``.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .modeling import ModelLayout, first_position_only, model_device, model_inputs


def supports_top_head(model: nn.Module) -> bool:
    """Whether ``model`` has the BERT-family layout that :class:`TopHead` needs:
    :attr:`~hf_pairdots.modeling.ModelLayout.has_top_head`."""
    return ModelLayout.of(model).has_top_head


CUTS = ("ffn", "pooler", "classifier")


def available_cuts(model: nn.Module) -> tuple[str, ...]:
    """The :data:`CUTS` of ``model``, lowest first: all three with a pooler; ``("ffn",
    "pooler")`` for a head without one (RoBERTa's ``dense`` + ``out_proj`` reads the last
    layer's output itself); ``()`` without the BERT-family layout."""
    layout = ModelLayout.of(model)
    if not layout.has_top_head:
        return ()
    return CUTS if layout.pooler is not None else CUTS[:2]


def _check_cut(model: nn.Module, cut: str) -> None:
    """ValueError naming the model's cuts unless ``cut`` is one of :func:`available_cuts`."""
    cuts = available_cuts(model)
    if cut not in cuts:
        raise ValueError(f"cut={cut!r}: {type(model).__name__} has the cuts {cuts}")


class TopHead(nn.Module):
    """The model's top as a function of cached features: ``(B, H) -> (B, num_labels)`` logits.

    ``cut``: where the cached features are taken (see :func:`compute_features`): ``"ffn"``
    (the last layer's feed-forward block, pooler and classifier are run), ``"pooler"`` (only
    the head: pooler and classifier, about 9x fewer multiply-adds for MiniLM-L6; a RoBERTa-style
    classifier on a length-1 sequence) or ``"classifier"`` (the classifier alone, on the pooled
    output; models with a pooler only): :func:`available_cuts`.

    Holds the model as ``self.model`` (no copy), so ``functional_call`` on the head takes the
    model's parameter names prefixed with ``"model."``. Eval mode: dropout is the identity.

    Raises:
        ValueError: the model lacks the BERT-family layout, or a ``cut`` it does not have.
    """

    def __init__(self, model: nn.Module, cut: str = "ffn"):
        super().__init__()
        layout = ModelLayout.of(model)
        if not layout.has_top_head:
            raise ValueError(f"{type(model).__name__} lacks the BERT-family layout (post-LN encoder.layer, a head "
                             "reading position 0: see ModelLayout.has_top_head)")
        _check_cut(model, cut)
        self.model, self.cut = model, cut
        self.layout = layout  # a plain attribute: its modules are the model's, not registered twice

    def forward(self, features: Tensor) -> Tensor:
        last, pooler, classifier = self.layout.last_layer, self.layout.pooler, self.layout.classifier
        if self.cut == "classifier":
            return classifier(features)
        hidden = features[:, None, :]
        if self.cut == "ffn":
            hidden = last.output(last.intermediate(hidden), hidden)
        return classifier(hidden if pooler is None else pooler(hidden))

    def parameter_names(self) -> set[str]:
        """Model parameter names that the head uses."""
        last, pooler, classifier = self.layout.last_layer, self.layout.pooler, self.layout.classifier
        modules = {"classifier": (classifier,), "pooler": (pooler, classifier),
                   "ffn": (last.intermediate, last.output, pooler, classifier)}[self.cut]
        owned = {id(p) for m in modules if m is not None for p in m.parameters()}
        return {n for n, p in self.model.named_parameters() if id(p) in owned}


def cut_features(model: nn.Module, inputs: dict, cut: str = "ffn") -> Tensor:
    """The features at ``cut`` as a differentiable function of the model's inputs, ``(B, H)`` on
    the model's device, in the model's dtype: what :func:`compute_features` caches, without its
    ``no_grad`` (so derivatives with respect to the embeddings reach the cut: see
    :meth:`hf_pairdots.loss.CachedTopLoss.saliency_gradients`).
    ``inputs``: the model's keyword inputs, already on its device. Cost: one forward pass, the
    last feed-forward block on position 0 only."""
    _check_cut(model, cut)
    layout = ModelLayout.of(model)
    last, pooler = layout.last_layer, layout.pooler
    captured = {}

    def keep(module, inputs, output):
        if cut == "ffn":
            captured["x"] = inputs[0][:, 0]  # the feed-forward block's input
        else:
            captured["x"] = output[:, 0] if cut == "pooler" else output

    handle = {"ffn": last.intermediate, "pooler": last.output, "classifier": pooler}[cut].register_forward_hook(keep)
    try:
        with first_position_only(model):
            model(**inputs)
    finally:
        handle.remove()
    return captured["x"]


@torch.no_grad()
def compute_features(model: nn.Module, batch: dict, out: Tensor | None = None, cut: str = "ffn") -> Tensor:
    """The features :class:`TopHead` reads, shape ``(B, H)``, float32: at position 0, the last
    layer's attention output (``cut="ffn"``) or the last layer's output (``"pooler"``); or the
    pooler's output (``"classifier"``).

    ``batch`` may live on any device: its inputs are moved to the model's device. Without
    ``out`` the features are returned on the model's device. ``out``: a ``(B, H)`` float32
    tensor to write into (returned), e.g. a view of one buffer for the whole training set
    (normally on the model's device too). Cost: one forward pass of the whole model (no
    gradient), the last feed-forward block on position 0 only (:func:`first_position_only`).
    """
    features = cut_features(model, model_inputs(batch, model_device(model)), cut)
    if out is None:
        return features.float().clone()
    return out.copy_(features)
