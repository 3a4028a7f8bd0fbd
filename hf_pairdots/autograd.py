"""Parameters as one flat vector, and the autodiff products influence needs (stateless).

Influence is taken over a *subset* θ_S of a model's parameters (Sec. 3.2 with θ restricted to
θ_S). :class:`ParameterSet` fixes the order of that subset once, so train-side and test-side
gradients always share one layout. Products are computed by ``torch.func``:

* gradient: ``torch.func.grad``;
* Hessian-vector product (HVP): forward-over-reverse, ``jvp(grad(f))``, cost ≈ 2-3 backward passes;
* directional derivative of per-example losses along a vector (JVP): one forward pass with
  dual numbers; this gives ∇θL(z_i)ᵀ s for every example of a batch without forming gradients.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UnsupportedModelError
from .modeling import FEED_FORWARD_BLOCKS, ModelLayout, unwrap_model


@dataclass(frozen=True)
class ParameterSet:
    """An ordered subset θ_S of a model's parameters, flattened to one vector of length P.

    Attributes:
        names: parameter names as in ``model.named_parameters()``, in flattening order.
        shapes: their shapes.
        tensors: the live parameter tensors (never modified here).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    tensors: tuple[Tensor, ...]

    @property
    def numel(self) -> int:
        """P, the length of the flat vector."""
        return sum(s.numel() for s in self.shapes)

    def flat(self) -> Tensor:
        """The current values as a detached float32 vector of shape ``(P,)``, on the parameters' device."""
        return torch.cat([t.detach().reshape(-1).float() for t in self.tensors])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a ``(P,)`` vector into ``{name: tensor}`` views with the parameters' shapes."""
        if vector.shape != (self.numel,):
            raise ValueError(f"expected a vector of shape ({self.numel},), got {tuple(vector.shape)}")
        pieces = torch.split(vector, [s.numel() for s in self.shapes])
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter tensors (``None`` = zero gradient) into a ``(P,)`` vector
        (zeros are made on the device of their parameter)."""
        return torch.cat([
            (torch.zeros(s, device=p.device) if t is None else t.float()).reshape(-1)
            for t, s, p in zip(tensors, self.shapes, self.tensors)
        ])


from .constants import LAST_PREFIX, PRESETS  # noqa: E402  (fixed preset names; "last:K" is accepted besides them)


def _parse_last(preset: str, num_layers: int | None) -> int:
    """K of a ``"last:K"`` preset, checked against the model's number of layers."""
    text = preset[len(LAST_PREFIX):]
    if not text.strip().isdigit():
        raise ValueError(f"params={preset!r}: write 'last:K' with an integer K >= 1, e.g. 'last:2'")
    k = int(text)
    if num_layers is None:
        raise _no_layers(preset)
    if not 1 <= k <= num_layers:
        raise ValueError(f"params={preset!r}: K={k} is out of range; this model has {num_layers} encoder "
                         f"layers, so use 1 <= K <= {num_layers}")
    return k


def _no_layers(preset: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"params={preset!r} needs an encoder with a list of layers (`.encoder.layer`, `.layers`, `.h`, ...; "
        "ALBERT shares one layer group); pass params='head', 'all', 'classifier', or a list of name patterns "
        "instead.")


def _preset_patterns(model: nn.Module, preset: str) -> list[str]:
    """``fnmatch`` patterns of a preset, for the model inside any peft wrapper."""
    layout = ModelLayout.of(model)
    prefix, base = layout.peft_prefix, layout.base_prefix
    if preset == "auto":
        preset = "lora" if any("lora_" in n for n, p in model.named_parameters() if p.requires_grad) else "head"
    if preset == "all":
        return ["*"]
    if preset == "lora":
        return ["*lora_*"]
    if preset == "linear":  # every nn.Linear layer (encoder and head): the domain of curvature="kfac"/"ekfac"
        return [f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.Linear)
                for p, _ in m.named_parameters(recurse=False)]
    if preset == "classifier":  # everything outside the base model
        return [prefix + n for n, _ in layout.inner.named_parameters() if not n.startswith(base + ".")]
    layers = layout.layers
    if preset.startswith(LAST_PREFIX):
        n = None if layers is None else len(layers)
        k = _parse_last(preset, n)
        below = [f"{prefix}{layout.layers_name}.{i}.*" for i in range(n - k, n)]
    elif preset == "top":
        if layers is None:
            raise _no_layers(preset)
        below = [f"{prefix}{name}.*" for name in layout.feed_forward_names]
        if not below:
            raise UnsupportedModelError(f"params='top': the last layer of {type(layout.inner).__name__} has none of "
                                        f"the feed-forward blocks {FEED_FORWARD_BLOCKS}; use params='last:1'")
    else:
        below = []
    if not layout.head_names:
        raise UnsupportedModelError(
            f"params={preset!r}: {type(layout.inner).__name__} has no classification head this package can find "
            "(a module beside the base model, or the base model's pooler); pass a list of name patterns")
    return below + [f"{prefix}{name}.*" for name in layout.head_names]


def select_parameters(model: nn.Module, params: str | Sequence[str] = "head") -> ParameterSet:
    """Choose the parameters θ_S over which influence is taken.

    Args:
        model: the (unwrapped) classifier.
        params: a preset or a list of ``fnmatch`` patterns over parameter names:

            * ``"auto"``: ``"lora"`` when the model has trainable LoRA adapters (a peft
              model: influence over what was fine-tuned), else ``"head"``;
            * ``"all"``: every parameter that requires grad;
            * ``"top"``: the last layer's feed-forward block and its norm
              (:attr:`~hf_pairdots.modeling.ModelLayout.feed_forward_names`) and the head; for the
              BERT family the subset that :mod:`hf_pairdots.features` caches (1.33 M parameters
              for MiniLM-L6);
            * ``"head"`` (default): the whole classification head
              (:attr:`~hf_pairdots.modeling.ModelLayout.head_names`: the pooler and the
              classifier of BERT / ALBERT, ``pre_classifier`` + ``classifier`` of DistilBERT,
              ContextPooler + classifier of DeBERTa, ``head`` + ``classifier`` of ModernBERT,
              ``score`` of GPT-2 / Llama / Qwen2 / Mistral, ``classification_head`` of BART,
              the two-layer ``classifier`` of RoBERTa / ELECTRA / MPNet; 0.15 M for MiniLM-L6,
              cached too, about 9x cheaper per HVP than ``"top"``);
            * ``"classifier"``: parameters outside the base model (the classification head);
            * ``"lora"``: the LoRA adapter weights of a peft model;
            * ``"linear"``: the weight and bias of every ``nn.Linear`` module (the encoder's
              attention and feed-forward projections, the pooler, the classifier; not the
              embeddings, LayerNorms or GPT-2's ``Conv1D``): the parameters that
              ``curvature="kfac"`` / ``"ekfac"`` (:mod:`hf_pairdots.kfac`) cover; 10.8 M for
              MiniLM-L6. Influence then runs through the full model;
            * ``"last:K"`` (1 <= K <= number of layers, :data:`~hf_pairdots.modeling.LAYER_LISTS`;
              BART: decoder layers): every parameter of the last K layers (attention and
              feed-forward) and the head. Unlike ``"top"`` this is not cached by :mod:`hf_pairdots.features`:
              influence then runs through the full model (one full forward/HVP pass per
              example). For MiniLM-L6, ``"last:1"`` is 1.78 M + 0.15 M parameters; each extra layer
              adds 1.78 M. On a peft model only the trainable parameters inside those layers
              (the adapters) and the trainable head copy are taken, as with the other presets.

    A ``torch.compile`` / DDP wrapper is looked through (:func:`~hf_pairdots.modeling.unwrap_model`):
    the names are those of the unwrapped model, the tensors the same.

    Returns:
        A :class:`ParameterSet`. Frozen parameters (``requires_grad=False``) are left out and tied
        parameters are counted once.

    Raises:
        ValueError: unknown preset, ``"last:K"`` with K out of range, or no trainable parameter
            matches. :class:`~hf_pairdots.errors.UnsupportedModelError` (a ``ValueError``): a
            preset the model's layout lacks (no head, no list of layers, no feed-forward block).
    """
    model = unwrap_model(model)
    if isinstance(params, str):
        if params not in PRESETS and not params.startswith(LAST_PREFIX):
            raise ValueError(f"params={params!r}: use one of {PRESETS}, 'last:K', or a list of name patterns")
        patterns = _preset_patterns(model, params)
    else:
        patterns = list(params)
    seen: set[int] = set()
    chosen = []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            seen.add(id(p))
            chosen.append((name, p))
    if not chosen:
        raise ValueError(
            f"params={params!r} matches no trainable parameter of {type(model).__name__}; "
            "check the names with model.named_parameters() and requires_grad"
        )
    return ParameterSet(tuple(n for n, _ in chosen), tuple(p.shape for _, p in chosen), tuple(p for _, p in chosen))


def hvp(loss: Callable[[Tensor], Tensor], theta: Tensor, v: Tensor) -> Tensor:
    """Hessian-vector product ∇²loss(θ) v by forward-over-reverse autodiff.

    Args:
        loss: scalar function of the flat parameters, ``(P,) -> ()``.
        theta: ``(P,)`` point of evaluation.
        v: ``(P,)`` vector, or ``(Q, P)`` for Q products at once (vectorised with ``vmap``; the
            loss must be vmap-friendly, as the cached head of :mod:`hf_pairdots.features` is).

    Returns:
        Tensor of ``v``'s shape.
    """
    def single(u: Tensor) -> Tensor:
        return torch.func.jvp(torch.func.grad(loss), (theta,), (u,))[1]

    return torch.func.vmap(single)(v) if v.dim() == 2 else single(v)


def directional_derivatives(per_example_loss: Callable[[Tensor], Tensor], theta: Tensor, s: Tensor) -> Tensor:
    """∇θ L(z_i; θ)ᵀ s for every example of a batch, by one forward-mode pass (JVP).

    Args:
        per_example_loss: ``(P,) -> (B,)`` losses of a batch.
        theta: ``(P,)``.
        s: ``(P,)`` direction (typically ``s_test``), or ``(Q, P)`` for Q directions (vmap).

    Returns:
        ``(B,)``, or ``(Q, B)`` for ``(Q, P)`` directions. Cost ≈ one forward pass per direction;
        no per-example gradient and no B x P matrix is ever formed.
    """
    def single(u: Tensor) -> Tensor:
        return torch.func.jvp(per_example_loss, (theta,), (u,))[1]

    return torch.func.vmap(single)(s) if s.dim() == 2 else single(s)
