"""Model preparation and layout: the one place that knows where things are in a model.

* :class:`ModelLayout`: where the peft prefix, the base model, the embedding block, the encoder
  layers, the pooler and the classifier of a sequence classifier are (BERT layout);
* the contexts every pass of saliency and influence runs in: :func:`unwrap_model`,
  :func:`eval_mode`, :func:`influence_mode` (float32, eval mode, eager attention, unwrapped; the
  user's weights and modes are never changed), :func:`autocast_disabled`,
  :func:`suspend_input_require_grads` and :func:`first_position_only`;
* what a forward pass is fed, and where: :data:`INPUT_KEYS`, :func:`model_inputs`,
  :func:`model_device`, :func:`sequence_length`, :func:`check_labels`;
* :func:`predict_proba`: the class probabilities of texts.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .constants import MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL
from .errors import SaliencyError, UnsupportedModelError
from .text import EncodedText, pad_encoded


PEFT_PREFIX = "base_model.model."
"""What a peft wrapper puts before the names of the wrapped model's parameters."""


LAYER_LISTS = ("encoder.layer", "transformer.layer", "decoder.layers", "layers", "h")
"""Where the layers of a base model are, first match wins: BERT family (``encoder.layer``),
DistilBERT (``transformer.layer``), encoder-decoders (``decoder.layers``: BART's classification
head reads the decoder), Llama / Qwen2 / Mistral / ModernBERT (``layers``), GPT-2 (``h``)."""

FEED_FORWARD_BLOCKS = ("intermediate", "output", "ffn", "output_layer_norm", "mlp_norm", "mlp", "ln_2",
                       "post_attention_layernorm", "fc1", "fc2", "final_layer_norm")
"""Children of a layer that make its feed-forward block and its norm (the ``"top"`` preset):
BERT family ``intermediate``/``output``, DistilBERT ``ffn``/``output_layer_norm``, ModernBERT
``mlp_norm``/``mlp``, GPT-2 ``ln_2``/``mlp``, Llama family ``post_attention_layernorm``/``mlp``,
BART ``fc1``/``fc2``/``final_layer_norm``."""

ENCODER_HELPERS = {"mpnet": {"relative_attention_bias"}, "deberta-v2": {"rel_embeddings", "LayerNorm", "conv"}}
"""Per ``config.model_type``: parameterised children of ``base.encoder`` besides its layers that
act inside the layers (relative-position biases and embeddings, DeBERTa-v2's norm of them and its
ConvLayer after layer 0), not after the last one: :attr:`ModelLayout.has_top_head` allows them."""

FINAL_NORMS = ("ln_f", "norm", "final_norm")
"""Norms of a base model between its last layer and the head (GPT-2, Llama family, ModernBERT)."""


@dataclass(frozen=True, eq=False)
class ModelLayout:
    """Where the parts of a sequence classifier are, found from the model by :meth:`of`.

    A base model ``inner.<base_model_prefix>`` holds the embeddings and the layers
    (:data:`LAYER_LISTS`); the classification head is everything of ``inner`` outside the base
    model (``classifier``, ``score``, ``classification_head``, ``pre_classifier``, DeBERTa's
    ``pooler``, ModernBERT's ``head``) plus the base model's own ``pooler`` (BERT, ALBERT);
    optionally inside a peft wrapper. A part the model lacks is ``None``. A DDP / accelerate /
    ``torch.compile`` wrapper is not looked through: pass the model after :func:`unwrap_model`.

    Attributes:
        model: the model given (a peft model stays one).
        inner: the model inside a peft wrapper (``model.get_base_model()``), else ``model``.
        peft_prefix: :data:`PEFT_PREFIX` for a peft model (``inner``'s parameter names in
            ``model`` start with it), else ``""``.
        base_prefix: ``inner.base_model_prefix`` (``"bert"``); ``""`` when it has none.
        base: the base model ``inner.<base_prefix>`` (embeddings and encoder), or ``None``.
        layers: the layers (``base.encoder.layer`` for BERT, :data:`LAYER_LISTS`), or ``None``
            (ALBERT shares one layer group: no per-layer presets).
        pooler: ``base.pooler`` (BERT, ALBERT), else the head's own ``inner.pooler`` (DeBERTa's
            ``ContextPooler``), or ``None``.
        classifier: ``inner.classifier``, else ``inner.score`` / ``inner.classification_head``,
            else ``None``: the last module of the head.
        layers_name: the dotted name of ``layers`` in ``inner`` (``"bert.encoder.layer"``), or ``None``.
        head_names: dotted names (in ``inner``) of the modules of the classification head, in
            the model's order; only modules with parameters.
    """

    model: nn.Module
    inner: nn.Module
    peft_prefix: str
    base_prefix: str
    base: nn.Module | None
    layers: nn.ModuleList | None
    pooler: nn.Module | None
    classifier: nn.Module | None
    layers_name: str | None = None
    head_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module) -> ModelLayout:
        """The layout of ``model`` (a few attribute look-ups; nothing is run or changed)."""
        get_base = getattr(model, "get_base_model", None)
        is_peft = callable(get_base)
        inner = get_base() if is_peft else model
        base_prefix = getattr(inner, "base_model_prefix", "")
        base = getattr(inner, base_prefix, None) if base_prefix else None
        if not isinstance(base, nn.Module):
            base = None
        layers_name = layers = None
        for path in LAYER_LISTS if base is not None else ():
            found = _get(base, path)
            if isinstance(found, nn.ModuleList) and len(found):
                layers_name, layers = f"{base_prefix}.{path}", found
                break
        pooler = getattr(base, "pooler", None)
        pooler = pooler if isinstance(pooler, nn.Module) else None
        head = [] if pooler is None else [f"{base_prefix}.pooler"]
        if pooler is None and base is not None and isinstance(getattr(inner, "pooler", None), nn.Module):
            pooler = inner.pooler  # DeBERTa's ContextPooler: part of the head, outside the base model
        if base is not None:  # a bare base model has no head
            head += [name for name, child in _parameterised_children(inner).items() if child is not base]
        classifier = next((getattr(inner, n) for n in ("classifier", "score", "classification_head")
                           if isinstance(getattr(inner, n, None), nn.Module)), None)
        return cls(model, inner, PEFT_PREFIX if is_peft else "", base_prefix, base, layers, pooler, classifier,
                   layers_name, tuple(head))

    @property
    def last_layer(self) -> nn.Module | None:
        """The last layer, or ``None``."""
        return self.layers[-1] if self.layers else None

    @property
    def feed_forward_names(self) -> tuple[str, ...]:
        """Dotted names (in ``inner``) of the last layer's feed-forward block and its norm
        (:data:`FEED_FORWARD_BLOCKS`), in the layer's order, and of the base model's final norm
        (:data:`FINAL_NORMS`) if any; ``()`` when the last layer has no such block."""
        last = self.last_layer
        if last is None:
            return ()
        index = len(self.layers) - 1
        blocks = [f"{self.layers_name}.{index}.{n}" for n in _parameterised_children(last) if n in FEED_FORWARD_BLOCKS]
        if blocks:  # a final norm between the last layer and the head (GPT-2 ln_f, Llama norm) is part of the top
            blocks += [f"{self.base_prefix}.{n}" for n in FINAL_NORMS
                       if isinstance(getattr(self.base, n, None), nn.Module)]
        return tuple(blocks)

    @property
    def has_top_head(self) -> bool:
        """Whether :class:`~hf_pairdots.features.TopHead` computes this model's logits exactly
        from the last layer's attention output at position 0, i.e. the model has the BERT-family
        layout: layers ``base.encoder.layer`` whose last one is post-LayerNorm ``attention`` →
        ``intermediate`` → ``output`` and nothing else, an encoder with nothing after its layers
        (:data:`ENCODER_HELPERS` act inside them), and a head that reads position 0 only: pooler +
        ``nn.Linear`` ``classifier`` (BERT, DeBERTa-v2's ContextPooler), or a
        ``*ClassificationHead`` ``classifier`` of ``dense`` + ``out_proj`` (RoBERTa, XLM-R,
        ELECTRA, MPNet). Pre-LayerNorm variants (Megatron-BERT: a norm inside the layer and after
        the encoder) and peft head copies are not (they take the general route)."""
        return self._post_ln_encoder() and self._head_reads_position_zero()

    def _post_ln_encoder(self) -> bool:
        last, encoder = self.last_layer, getattr(self.base, "encoder", None)
        if last is None or self.layers_name != f"{self.base_prefix}.encoder.layer":
            return False
        allowed = ENCODER_HELPERS.get(getattr(getattr(self.inner, "config", None), "model_type", None), set())
        helpers = {name for name in _parameterised_children(encoder) if name != "layer"}
        if set(_parameterised_children(last)) != {"attention", "intermediate", "output"} or not helpers <= allowed:
            return False
        return "conv" not in helpers or len(self.layers) >= 2  # DeBERTa-v2's ConvLayer runs after layer 0

    def _head_reads_position_zero(self) -> bool:
        if self.pooler is not None:
            pooler_name = f"{self.base_prefix}.pooler" if self.pooler is getattr(self.base, "pooler", None) else "pooler"
            return isinstance(self.classifier, nn.Linear) and set(self.head_names) == {pooler_name, "classifier"}
        if set(self.head_names) != {"classifier"} or not type(self.classifier).__name__.endswith("ClassificationHead"):
            return False
        parts = _parameterised_children(self.classifier)
        return set(parts) == {"dense", "out_proj"} and all(isinstance(part, nn.Linear) for part in parts.values())

    def embedding_block(self, module_name: str | None = None) -> nn.Module:
        """The module whose output is the encoder's input (where e_t lives): see
        :func:`find_embedding_block`."""
        if module_name is not None:
            return self.model.get_submodule(module_name)
        found = self._called_embedding()
        if found is None:
            getter = getattr(self.model, "get_input_embeddings", None)
            found = getter() if callable(getter) else None
        if found is None:
            found = next((m for m in self.model.modules() if isinstance(m, nn.Embedding)), None)
        if found is None:
            raise SaliencyError(
                f"{type(self.model).__name__} has no embedding block (`<base model>.embeddings`), no "
                "get_input_embeddings() and no nn.Embedding: saliency is impossible; give "
                "find_embedding_block(model, module_name='<dotted name>') the module to use"
            )
        return found

    def _called_embedding(self) -> nn.Module | None:
        base = self.inner if self.base is None else self.base
        for path in ("embeddings", "encoder.layernorm_embedding", "embed_tokens"):
            found = _get(base, path)
            if isinstance(found, nn.Module):
                return found
        if isinstance(getattr(base, "wte", None), nn.Module) and isinstance(getattr(base, "drop", None), nn.Module):
            return base.drop  # GPT-2: token + position embeddings, then dropout: the first block's input
        return None


def _get(module: nn.Module | None, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def find_embedding_block(model: nn.Module, module_name: str | None = None) -> nn.Module:
    """The module whose output is the encoder's input (where e_t of Sec. 3.1 lives), one that the
    model's forward really calls.

    Looks for, in order: ``module_name`` (a dotted name) if given; ``<base model>.embeddings``
    (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa, MPNet, ModernBERT, ...; :class:`ModelLayout`);
    ``<base model>.encoder.layernorm_embedding`` (BART: its encoder and decoder call their own
    ``embed_tokens``, never the shared one ``get_input_embeddings()`` returns; the encoder's
    input is the output of this LayerNorm, and the decoder's view of the tokens is held fixed);
    ``<base model>.embed_tokens`` (Llama, Qwen2, Mistral: no position embedding is added);
    ``<base model>.drop`` when there is a ``wte`` (GPT-2: token plus position embeddings);
    ``model.get_input_embeddings()``; the first ``nn.Embedding``.

    Raises:
        SaliencyError: none of these exists.
    """
    return ModelLayout.of(model).embedding_block(module_name)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / accelerate wrappers (``.module``) and ``torch.compile``'s
    (``._orig_mod``, whose parameter names start with ``_orig_mod.``): the module whose parameter
    names the presets know. peft models stay peft models. The tensors are the same."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
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


def float32_model(model: nn.Module, *, keep_float64: bool = False) -> nn.Module:
    """``model`` itself when every floating parameter is float32 (or, with ``keep_float64``,
    float64), else a float32 deep copy (fp16/bf16 weights: the user's model is never changed).
    Cost: none, or one copy of the weights."""
    allowed = (torch.float32, torch.float64) if keep_float64 else (torch.float32,)
    if any(p.is_floating_point() and p.dtype not in allowed for p in model.parameters()):
        return copy.deepcopy(model).float()
    return model


def prepare_model(model: nn.Module) -> nn.Module:
    """The model that :func:`~hf_pairdots.saliency.saliency` and the
    :class:`~hf_pairdots.explain.Explainer` run on: unwrapped (DDP, accelerate, ``torch.compile``;
    :func:`unwrap_model`) and at least float32 (:func:`float32_model`: a float32 copy of
    fp16/bf16 weights; float64 weights, a caller's explicit choice of more precision, are kept).
    Eval mode and eager attention are set per call by :func:`eval_eager_mode`, which gives the
    model its own back afterwards."""
    return float32_model(unwrap_model(model), keep_float64=True)


@contextlib.contextmanager
def influence_mode(model: nn.Module):
    """Float32, eval mode, eager attention, unwrapped; restores the model's mode afterwards.

    A model whose parameters are not float32 (fp16/bf16 training) is deep-copied to float32, so
    the trained weights are never changed. A caller's ``torch.autocast`` region (any device
    type) is left for the block (:func:`autocast_disabled`), so the maths
    inside is float32 too, and comes back afterwards. The input-embedding hooks of gradient
    checkpointing are suspended (:func:`suspend_input_require_grads`).
    Yields the model.
    """
    model = float32_model(unwrap_model(model))
    with eval_eager_mode(model):
        yield model


@contextlib.contextmanager
def eval_eager_mode(model: nn.Module):
    """Eval mode and eager attention (SDPA / flash attention have no double backward, case C06),
    input-embedding hooks suspended, autocast left, for the block; the model's attention
    implementation and modes come back afterwards. Yields the model."""
    config = getattr(model, "config", None)
    old_attn = getattr(config, "_attn_implementation", None)
    switch = old_attn not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")  # SDPA/flash have no double backward
    try:
        with eval_mode(model), suspend_input_require_grads(model), autocast_disabled():
            yield model
    finally:
        if switch:
            model.set_attn_implementation(old_attn)


@contextlib.contextmanager
def suspend_input_require_grads(model: nn.Module):
    """Detach, while the block runs, the hooks of ``transformers``' ``enable_input_require_grads``.

    ``gradient_checkpointing_enable()`` (and peft) hook the input embeddings with
    ``output.requires_grad_(True)``, which ``torch.func`` transforms reject: saliency, Eq. 5 and
    every HVP through the embeddings would fail on such a model. The hooks are put
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


def _first_position(module, inputs, output):
    return (output[0][:, :1], *output[1:]) if isinstance(output, tuple) else output[:, :1]


@contextlib.contextmanager
def first_position_only(model: nn.Module):
    """Within the block, the last layer's attention block hands only position 0 on, so its
    feed-forward block runs on one position per example instead of L: a BERT-family classifier
    reads nothing else (the pooler takes position 0), so logits, losses and their derivatives are
    unchanged, and about 11 % of the multiply-adds of MiniLM-L6 are saved. The last hidden state
    then has length 1. A model without the BERT layout (:attr:`ModelLayout.has_top_head`) runs
    unchanged."""
    layout = ModelLayout.of(model)
    attention = getattr(layout.last_layer, "attention", None) if layout.has_top_head else None
    if not isinstance(attention, nn.Module):
        yield
        return
    handle = attention.register_forward_hook(_first_position)
    try:
        yield
    finally:
        handle.remove()


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


def sequence_length(inputs: dict) -> int:
    """L, the padded length of a tokenised batch (of ``input_ids`` ``(B, L)``, else of
    ``inputs_embeds`` ``(B, L, H)``)."""
    key = "input_ids" if "input_ids" in inputs else "inputs_embeds"
    return inputs[key].shape[1]




def problem_type(model: nn.Module) -> str:
    """The model's training problem, as its own loss decides it: ``config.problem_type`` when
    set, else ``"regression"`` for ``num_labels == 1`` and ``"single_label_classification"``
    otherwise (transformers' rule for integer labels; a multi-label model must set
    ``problem_type="multi_label_classification"``).

    Raises:
        UnsupportedModelError: a ``problem_type`` outside :data:`PROBLEM_TYPES`.
    """
    config = getattr(unwrap_model(model), "config", None)
    kind = getattr(config, "problem_type", None)
    if kind is None:
        return REGRESSION if getattr(config, "num_labels", 2) == 1 else SINGLE_LABEL
    if kind not in PROBLEM_TYPES:
        raise UnsupportedModelError(f"config.problem_type={kind!r} is not one of {PROBLEM_TYPES}: the training loss "
                                    "is unknown, so influence cannot be taken")
    return kind


def label_tensor(model: nn.Module, labels) -> Tensor:
    """The labels as the model's loss reads them: ``(N,)`` int64 class ids (single-label),
    ``(N,)`` float32 targets (regression with one output, else ``(N, num_labels)``) or ``(N,
    num_labels)`` float32 multi-hot rows (multi-label)."""
    kind = problem_type(model)
    dtype = torch.long if kind == SINGLE_LABEL else torch.float32
    return torch.as_tensor(labels if isinstance(labels, Tensor) else list(labels), dtype=dtype)


def output_scores(logits: Tensor, kind: str = SINGLE_LABEL) -> Tensor:
    """The model's scores of its ``(B, K)`` logits, float32 ``(B, K)`` on their device: the softmax
    probabilities (single-label), the per-label sigmoid probabilities (multi-label) or the
    predicted values themselves (regression), following ``kind`` (:func:`problem_type`)."""
    logits = logits.float()
    if kind == SINGLE_LABEL:
        return logits.softmax(-1)
    return torch.sigmoid(logits) if kind == MULTI_LABEL else logits


def check_outputs(model: nn.Module, labels: Tensor) -> None:
    """Refuse output indices y (the label whose score saliency explains) outside
    ``0..num_labels - 1``, for every problem type.

    Raises:
        ValueError: naming the indices outside the model's outputs.
    """
    k = model.config.num_labels
    bad = [int(v) for v in torch.as_tensor(labels).reshape(-1) if not 0 <= int(v) < k]
    if bad:
        raise ValueError(f"labels {bad} are outside the model's {k} labels (0..{k - 1})")


def check_labels(model: nn.Module, labels: Tensor, rows: Sequence[int] | None = None) -> None:
    """Refuse labels the model's loss cannot take before any pass runs: single-label classes
    outside ``0..num_labels - 1`` (or not integers), regression targets that are not finite
    numbers of the output's shape, multi-label rows that are not ``num_labels`` values in [0, 1].

    Raises:
        ValueError: naming the bad labels, and with ``rows`` (the caller's row index of each
            label) their rows.
    """
    k = model.config.num_labels
    kind = problem_type(model)
    labels = torch.as_tensor(labels)
    if kind == SINGLE_LABEL:
        if labels.dim() != 1 or labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ValueError(f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype}: a single-label "
                             f"classifier takes one class id per example (0..{k - 1})")
        bad = [i for i, v in enumerate(labels) if not 0 <= int(v) < k]
        what = f"are outside the model's {k} labels (0..{k - 1})"
    else:
        values = labels.float()
        shape = (len(values),) if kind == REGRESSION and k == 1 else (len(values), k)
        if values.reshape(len(values), -1).shape != (len(values), k) or values.dim() > 2:
            raise ValueError(f"labels of shape {tuple(labels.shape)}: problem_type={kind!r} with {k} outputs takes "
                             f"targets of shape {shape}")
        rows_ = values.reshape(len(values), -1)
        ok = torch.isfinite(rows_).all(1) if kind == REGRESSION else ((rows_ >= 0) & (rows_ <= 1)).all(1)
        bad = [i for i in range(len(values)) if not bool(ok[i])]
        labels = rows_ if k > 1 else rows_[:, 0]
        what = "are not finite" if kind == REGRESSION else "are not multi-hot rows of values in [0, 1]"
    if bad:
        where = "" if rows is None else f" of rows {[rows[i] for i in bad]}"
        shown = [labels[i].tolist() if labels.dim() > 1 else (int(labels[i]) if kind == SINGLE_LABEL
                                                              else float(labels[i])) for i in bad]
        raise ValueError(f"labels {shown}{where} {what}")


@torch.no_grad()
@autocast_disabled()
def predict_proba(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                  max_length: int = 128, show_progress: bool = False) -> torch.Tensor:
    """Class probabilities ``(N, num_labels)`` in the order of ``texts``, float32 on the CPU;
    texts must be non-empty (``ValueError`` naming the first empty one).

    The texts are tokenised once (:meth:`~hf_pairdots.text.EncodedText.encode_many`) and
    predicted by :func:`predict_encoded`. Cost: N forward passes.
    """
    return predict_encoded(model, tokenizer, EncodedText.encode_many(tokenizer, texts, max_length),
                           batch_size=batch_size, show_progress=show_progress)


@torch.no_grad()
@autocast_disabled()
def predict_encoded(model: nn.Module, tokenizer, encoded: Sequence[EncodedText], *, batch_size: int = 64,
                    show_progress: bool = False) -> torch.Tensor:
    """The model's scores ``(N, num_labels)`` of already tokenised texts, float32 on the CPU, in
    their order: class probabilities (softmax; sigmoid per label for a multi-label model) or, for
    a regression model, the predicted values (:func:`output_scores`).

    The forward passes run on the model's device, over batches of texts of similar length (sorted
    by word count, so little padding), the last feed-forward block on position 0 only for the
    BERT family (:func:`first_position_only`), in eval mode (the model's
    train/eval mode is restored afterwards) and in float32 even inside a caller's
    ``torch.autocast`` region (:func:`autocast_disabled`). Cost: N forward passes.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].words))
    out = torch.empty(len(encoded), model.config.num_labels)
    device, kind = model_device(model), problem_type(model)
    with eval_mode(model), first_position_only(model):  # a model straight out of Trainer.train() is in train mode
        for start in tqdm(range(0, len(encoded), batch_size), disable=not show_progress, desc="predict"):
            rows = order[start:start + batch_size]
            batch = pad_encoded(tokenizer, [encoded[i] for i in rows])
            out[rows] = output_scores(model(**model_inputs(batch, device)).logits, kind).cpu()
    return out


def _parameterised_children(module: nn.Module) -> dict[str, nn.Module]:
    """The direct children of ``module`` that hold parameters, by name."""
    return {name: child for name, child in module.named_children() if any(True for _ in child.parameters())}
