"""Whitespace words and their tokenisation: which words of a text the model sees.

The whitespace word is the unit of saliency (Sec. 3.1) and of Eq. 8. The token ids are always
those of the plain encoding of the text, ``tokenizer(text)``, the ids a model fine-tuned on raw
text was trained on (:func:`word_encoding`). Texts are first tokenised as pre-split words
(``is_split_into_words=True``), so the tokenizer's ``word_ids`` map every word piece back to its
word; when that gives other ids than the plain encoding (byte-level BPE tokenizers, RoBERTa,
GPT-2, BART, Qwen2, loaded with ``add_prefix_space=False``, drop the space marker of pre-split
words: ``'Ġfrom'`` becomes ``'f', 'rom'``; sentencepiece BPE adds one to every word), the plain
encoding is used and each token's word is read from its character offsets (:class:`WordEncoding`);
a slow tokenizer, which has no offsets, is refused then (:class:`TokenizationError`). Special
tokens ([CLS], [SEP], padding) and whitespace-only tokens map to no word. Which words are
scored always comes from the encoding's word ids (:func:`scored_words`): a word past
``max_length`` has no token, and neither has a word that the tokenizer's normaliser deletes (a
zero-width space, a lone combining accent), which is not counted as truncated
(:func:`truncated_words`). :func:`unscorable_texts` finds, before any model call, the texts in
which no word can be scored.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from .errors import TokenizationError


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
        TokenizationError: pre-split words give other ids than the raw text and the tokenizer is a
            slow one, without offsets (a ``ValueError``; the message names the fix).
    """
    enc, words = word_encoding(tokenizer, texts, max_length, pad_to_multiple_of, rows)
    return enc, words, truncated_words(tokenizer, words, [enc.word_ids(i) for i in range(len(words))])


def word_encoding(tokenizer, texts: Sequence[str], max_length: int | None = None,
                  pad_to_multiple_of: int | None = None, rows: Sequence[int] | None = None, padding: bool = True):
    """``(encoding, words)`` of :func:`encode_words` (same arguments and errors), without the
    truncation count: for callers that only feed the encoding to the model. ``padding=False``:
    lists of ids per text instead of a padded tensor batch.

    The encoding's ids are those of ``tokenizer(texts)`` (padded, truncated): the pre-split
    encoding when its ids are the same (WordPiece, unigram), else the plain encoding as a
    :class:`WordEncoding` (byte-level BPE with ``add_prefix_space=False``, sentencepiece BPE).
    Cost: two tokenisations of the texts (pre-split and plain, compared as lists). A tokenizer
    that is no ``transformers`` tokenizer (a word-level stand-in) is called on the pre-split
    words only, and its word ids are taken as it gives them."""
    words = [t.split() for t in texts]
    for i, w in enumerate(words):
        if not w:
            raise ValueError(f"text {i if rows is None else rows[i]} is empty or whitespace only: nothing to "
                             "score (leave the row out)")
    max_length = max_length or min(tokenizer.model_max_length, 512)
    if pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
        pad_to_multiple_of = None
    extra = {} if pad_to_multiple_of is None else {"pad_to_multiple_of": pad_to_multiple_of}
    common = dict(truncation=True, max_length=max_length, padding=padding, **extra)
    tensors = "pt" if padding else None
    if not isinstance(tokenizer, PreTrainedTokenizerBase):  # a duck-typed word tokenizer: its word ids as given
        return tokenizer(words, is_split_into_words=True, return_tensors=tensors, **common), words
    enc = tokenizer(words, is_split_into_words=True, **common)  # Python lists: compared before any tensor exists
    fast = bool(getattr(tokenizer, "is_fast", False))
    plain = tokenizer(list(texts), **({"return_offsets_mapping": True} if fast else {}), **common)
    offsets = plain.pop("offset_mapping", None)
    if enc["input_ids"] == plain["input_ids"]:
        return enc.convert_to_tensors(tensors), words
    if offsets is None:
        raise TokenizationError(
            f"{type(tokenizer).__name__} gives other token ids for pre-split words than for the raw text (a "
            "byte-level BPE tokenizer loaded with add_prefix_space=False drops the space marker: 'Ġfrom' becomes "
            "'f', 'rom'), and being a slow tokenizer it has no character offsets to map the raw text's tokens "
            "to words. Load the fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)), or reload it "
            "with add_prefix_space=True and fine-tune on that tokenisation")
    special = set(tokenizer.all_special_ids)
    ids = [_offset_word_ids(t, o, row, special) for t, o, row in zip(texts, offsets, plain["input_ids"])]
    return WordEncoding(dict(plain), ids).convert_to_tensors(tensors), words


class WordEncoding(BatchEncoding):
    """The plain encoding of texts (``tokenizer(texts)``: a ``BatchEncoding`` of ``(B, L)``
    tensors) whose :meth:`word_ids` are read from the tokens' character offsets: token p of text
    i belongs to the whitespace word holding the first non-whitespace character of its span, and
    to no word when it is a special token, padding, empty or whitespace only (a lone ``'Ġ'`` of
    a double space). A token spanning two words belongs to the first (whitespace pre-tokenisers
    never make one). Built by :func:`word_encoding`."""

    def __init__(self, data: dict, word_ids: Sequence[Sequence[int | None]]):
        super().__init__(data)
        self._word_id_lists = [list(w) for w in word_ids]

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """``(L,)`` word index of each token of text ``batch_index`` (``None``: no word)."""
        return list(self._word_id_lists[batch_index])


def word_spans(text: str) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` character spans of the whitespace words of ``text``, in order:
    ``text[start:end]`` is ``text.split()[k]`` exactly."""
    spans, start = [], None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _offset_word_ids(text: str, offsets: Sequence[Sequence[int]], ids: Sequence[int], special: set[int]):
    spans = word_spans(text)
    starts = [s for s, _ in spans]
    out: list[int | None] = []
    for (s, e), token in zip(offsets, ids):
        first = next((c for c in range(s, e) if not text[c].isspace()), None)
        if token in special or first is None:
            out.append(None)
            continue
        k = bisect.bisect_right(starts, first) - 1
        out.append(k if k >= 0 and first < spans[k][1] else None)
    return out


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


class EncodedText:
    """One text tokenised once, as whitespace words: what saliency, ∇θ m, Eq. 8 and the record
    read of it, so that none of them tokenises it again or re-derives its word positions.

    Attributes:
        text: the text.
        words: its whitespace words (``text.split()``).
        encoding: the model inputs of the text alone, ``{name: (1, L) CPU tensor}``, no padding:
            the ids of ``tokenizer(text)`` (:func:`word_encoding`).
        word_ids: per token position, the index of its word (``None``: a special token).
        scored: sorted indices of the words that have a token (:func:`scored_words`).

    Build with :meth:`encode` (one encoding: :func:`word_encoding`). :attr:`truncated` (the words lost to
    truncation) costs one more tokenisation of the words after the last scored one, the first
    time it is read, and none for a text that fits.

    Raises:
        ValueError: the text is empty or whitespace only (naming ``row``).
    """

    def __init__(self, tokenizer, text: str, encoding: dict, word_ids: Sequence[int | None], words: list[str]):
        self.tokenizer, self.text, self.encoding, self.words = tokenizer, text, encoding, words
        self.word_ids: list[int | None] = list(word_ids)
        self.scored: list[int] = _words_of(self.word_ids)
        self._truncated: int | None = None

    @classmethod
    def encode(cls, tokenizer, text: str, max_length: int | None = None, row: int | None = None) -> EncodedText:
        """Tokenise ``text`` as :func:`word_encoding` does (truncation to ``max_length``, default
        the tokenizer's maximum capped at 512). Cost: one :func:`word_encoding`."""
        enc, [words] = word_encoding(tokenizer, [text], max_length, rows=None if row is None else [row])
        return cls(tokenizer, text, dict(enc), enc.word_ids(0), words)

    @classmethod
    def encode_many(cls, tokenizer, texts: Sequence[str], max_length: int | None = None,
                    rows: Sequence[int] | None = None) -> list[EncodedText]:
        """:meth:`encode` of every text, in one :func:`word_encoding` call (no padding): each object
        holds the same ids as the text encoded alone. Same errors as :meth:`encode`."""
        enc, words = word_encoding(tokenizer, texts, max_length, rows=rows, padding=False)
        return [cls(tokenizer, texts[i], {key: torch.tensor([values[i]]) for key, values in enc.items()},
                    enc.word_ids(i), w) for i, w in enumerate(words)]

    @property
    def truncated(self) -> int:
        """Words lost to truncation (:func:`truncated_words`); words that give no token do not count."""
        if self._truncated is None:
            [self._truncated] = truncated_words(self.tokenizer, [self.words], [self.word_ids])
        return self._truncated

    def positions(self, word: int) -> list[int]:
        """Token positions of word ``word`` (its word pieces, in order; empty when it has none)."""
        return [p for p, w in enumerate(self.word_ids) if w == word]

    def inputs(self, copies: int = 1) -> dict:
        """The model inputs, ``(copies, L)`` CPU tensors (the same text ``copies`` times)."""
        return {key: t.expand(copies, *t.shape[1:]) for key, t in self.encoding.items()}


def pad_encoded(tokenizer, encoded: Sequence[EncodedText]) -> dict:
    """The model inputs of several tokenised texts as one padded batch, ``(B, L)`` CPU tensors:
    the tensors the tokenizer gives for the same texts tokenised together with ``padding=True``."""
    features = [{key: t[0].tolist() for key, t in e.encoding.items()} for e in encoded]
    return dict(tokenizer.pad(features, padding=True, return_tensors="pt"))
