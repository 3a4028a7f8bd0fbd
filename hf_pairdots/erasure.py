"""Erasing words of a tokenised text: the eraser of Eq. 8 and of occlusion saliency.

Three erasers (:data:`~hf_pairdots.constants.ERASERS`): the tokenizer's UNK token (``"unk"``, the
paper's z̃(t, UNK)), its mask token (``"mask"``), or the word's word-piece embeddings set to zero
(``"zero"``, the paper's footnote 2). Byte-level BPE tokenizers have no UNK of their own; their
``unk_token`` (GPT-2, Qwen2: ``"<|endoftext|>"``, also EOS and usually pad) is then the eraser, by
choice (docs/architectures.md).

:func:`erased_inputs` erases **token by token**: every word piece of the word keeps its position and
is replaced by the eraser, so the erased text has the same length and positions as the text. (Eq. 8
on training examples, :func:`~hf_pairdots.influence.erased_variants`, instead re-tokenises the text
with one eraser token in place of the word, as the paper writes it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .constants import ERASERS
from .modeling import model_device
from .text import EncodedText


def eraser_token(tokenizer, eraser: str) -> str:
    """The token that erases a word: ``tokenizer.unk_token`` (``"unk"``) or ``mask_token`` (``"mask"``).

    Raises:
        ValueError: ``eraser`` is ``"zero"`` (no token) or unknown, or the tokenizer has no such
            token; the message names the erasers this tokenizer can use.
    """
    token = {"unk": getattr(tokenizer, "unk_token", None), "mask": getattr(tokenizer, "mask_token", None)}.get(eraser)
    if token is None:
        usable = [e for e in ERASERS if e == "zero" or getattr(tokenizer, e + "_token", None)]
        raise ValueError(f"eraser={eraser!r}: the tokenizer has no such token; use one of {usable}")
    return token


def zeroed_word_embeddings(model: nn.Module, encoded: EncodedText, words: Sequence[int]) -> Tensor:
    """``(1 + len(words), L, H)`` word embeddings of the text (the input-embedding lookup, before
    position embeddings and norms) on the model's device: row 0 the text's own, row j + 1 with
    the pieces of word ``words[j]`` set to zero. Cost: one embedding lookup."""
    ids = encoded.encoding["input_ids"][:1].expand(len(words) + 1, -1)
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids.to(model_device(model))).clone()
    for j, word in enumerate(words):
        emb[j + 1, encoded.positions(word)] = 0.0
    return emb


def erased_inputs(model: nn.Module, encoded: EncodedText, words: Sequence[int], eraser: str = "unk") -> dict:
    """Model inputs of the text and of its erased copies, ``(1 + len(words), L)`` tensors on the CPU
    (``inputs_embeds`` ``(1 + len(words), L, H)`` on the model's device for ``"zero"``): row 0 is
    the text, row j + 1 the text with every token of word ``words[j]`` erased, token by token.

    Raises:
        ValueError: a word with no token in the input (past ``max_length``, or deleted by the
            normaliser), or an eraser the tokenizer lacks (:func:`eraser_token`).
    """
    missing = [w for w in words if w not in encoded.scored]
    if missing:
        raise ValueError(f"words {missing} have no token in the model's input: nothing to erase")
    inputs = encoded.inputs(len(words) + 1)
    if eraser == "zero":
        rest = {key: t for key, t in inputs.items() if key != "input_ids"}
        return {**rest, "inputs_embeds": zeroed_word_embeddings(model, encoded, words)}
    token_id = encoded.tokenizer.convert_tokens_to_ids(eraser_token(encoded.tokenizer, eraser))
    ids = inputs["input_ids"].clone()
    for j, word in enumerate(words):
        ids[j + 1, encoded.positions(word)] = token_id
    return {**inputs, "input_ids": ids}
