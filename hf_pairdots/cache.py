"""On-disk cache of s_test (and, under other keys, of any tensor such as training scores).

s_test = (H + λI)⁻¹ ∇θ m is the expensive part of an explanation (depth x repeat stochastic
HVPs for LiSSA). It is a pure function of

* the model (the parameter subset θ_S, and the rest of the network that produces θ_S's inputs),
* the training data (the Hessian),
* the arguments (solver options with the *resolved* λ and σ, params, max_length, batch_size),
* the measurement (which ∇θ m; the safest key is the bytes of the ∇θ m row itself).

so a rerun of the same explanation can read it back. Keys are sha256 hex digests of a canonical
JSON of those parts (:func:`cache_key`); entries are safetensors files written atomically
(:func:`hf_pairdots.io.atomic_write_file`), so a reader never sees a partial file and concurrent writers of
one key simply replace each other's identical result. A file that cannot be read is a miss,
and is removed.

Typical use::

    model_fp = fingerprint_model(model, objective.params)
    data_fp = fingerprint_texts(train_texts, train_labels)
    key = cache_key("s_test", model_fp, data_fp, solver_options, {"max_length": 128},
                    fingerprint_tensor(v[q]))
    cache = STestCache("~/.cache/hf_pairdots/s_test")
    s = cache.get(key)           # (P,) tensor or None
    if s is None:
        s = solve(...); cache.put(key, s)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .autograd import ParameterSet
from .io import atomic_write_file
from .modeling import ModelLayout

FORMAT_VERSION = "hf_pairdots-cache-v1"
"""Part of every key: bump it when what a cached tensor means changes."""

NOT_IN_KEY = ("keep_repeats", "cache_dir")
"""Option fields that do not change s_test and are left out of :func:`cache_key`."""

_KEY = re.compile(r"^[0-9a-f]{64}$")
_TENSOR = "tensor"


def _update_tensor(h, tensor: Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes (CPU, contiguous) to a hash."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def fingerprint_tensor(tensor: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes, e.g. of one ∇θ m row as the measurement key.

    Cost: one pass over the tensor's bytes (plus a copy to CPU for a device tensor).
    """
    h = hashlib.sha256()
    _update_tensor(h, tensor)
    return h.hexdigest()


def _model_config(model: nn.Module) -> str:
    inner = ModelLayout.of(model).inner
    config = getattr(inner, "config", None)
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else type(inner).__name__
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict):  # adapter settings (rank, alpha, targets) of a peft model
        text += json.dumps({k: repr(v) for k, v in sorted(peft.items())}, sort_keys=True)
    return text


def fingerprint_model(model: nn.Module, params: ParameterSet, *, include_rest: bool = True) -> str:
    """sha256 of what s_test depends on in the model.

    Always: the names, dtypes, shapes and values of the parameter subset θ_S (in ``params``'s
    order), and the model config as JSON (``config.to_json_string(use_diff=False)``; for a peft
    model also its adapter config). With ``include_rest`` (default) also every other parameter
    and buffer of the model, by name: the layers below θ_S produce θ_S's inputs, so they change
    H and ∇θ m even when θ_S is unchanged (e.g. a model whose encoder kept training).
    ``include_rest=False`` hashes θ_S only; use it only when the rest is known to be frozen.

    Cost: one sha256 pass over the hashed bytes (all of the model's float32 weights with
    ``include_rest``, else θ_S's; measured in ``benchmarks/RESULTS.md``).
    """
    h = hashlib.sha256()
    h.update(b"subset\0")
    for name, tensor in zip(params.names, params.tensors):
        h.update(name.encode() + b"\0")
        _update_tensor(h, tensor)
    if include_rest:
        h.update(b"rest\0")
        chosen = {id(t) for t in params.tensors}
        seen: set[int] = set()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if id(tensor) in chosen or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            h.update(name.encode() + b"\0")
            _update_tensor(h, tensor)
    h.update(b"config\0" + _model_config(model).encode())
    return h.hexdigest()


TOKENIZER_SETTINGS = ("padding_side", "truncation_side", "add_prefix_space", "do_lower_case", "lowercase",
                      "model_max_length", "add_bos_token", "add_eos_token")
"""Tokenizer attributes (or ``init_kwargs``) that change the ids of a text, hashed by
:func:`fingerprint_tokenizer` besides its class and vocabulary."""


def fingerprint_tokenizer(tokenizer) -> str:
    """sha256 of what the token ids of a text depend on in ``tokenizer``: its class name, its
    vocabulary (``get_vocab()``, sorted; added tokens included), its special tokens and the
    settings of :data:`TOKENIZER_SETTINGS` (padding and truncation side, ``add_prefix_space``,
    lower-casing, maximum length, BOS/EOS), as attributes or else ``init_kwargs``; with a fast
    tokenizer also its normaliser / pre-tokeniser / post-processor JSON. The same texts through
    another tokenizer are other inputs, so s_test and the scores must not be shared.
    Cost: one pass over the vocabulary (and the tokenizer JSON)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode() + b"\0")
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    settings = {k: getattr(tokenizer, k, init.get(k)) for k in TOKENIZER_SETTINGS}
    settings["special"] = getattr(tokenizer, "special_tokens_map", {})
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        h.update(json.dumps({k: state.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "truncation")},
                            sort_keys=True).encode())
    return h.hexdigest()


def _label_text(label) -> str:
    """A label as hashed: ``str(int)`` for a class id (as before float targets were allowed), the
    ``repr`` of a float target, the bracketed ``repr``s of a row's values."""
    if isinstance(label, (list, tuple)):
        return "[" + ",".join(repr(float(v)) for v in label) + "]"
    if isinstance(label, float):
        return repr(label)
    return str(int(label))


def fingerprint_texts(texts: Sequence[str], labels: Sequence) -> str:
    """sha256 of the training set: every (text, label) pair, in order (the order matters:
    LiSSA's mini-batches and the score columns follow it). Labels are class ids, float targets
    (regression; by ``repr``) or multi-hot rows (their values' ``repr``s). Cost: one pass over the texts.

    Raises:
        ValueError: ``texts`` and ``labels`` differ in length.
    """
    texts, labels = list(texts), [_label_text(y) for y in labels]
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    h = hashlib.sha256(f"n={len(texts)}\0".encode())
    for text, label in zip(texts, labels):
        data = text.encode("utf-8")
        h.update(f"{len(data)}:".encode() + data + f"|{label}\0".encode())  # length-prefixed: unambiguous
    return h.hexdigest()


def _canonical(obj):
    """JSON-ready form: dataclasses as dicts (minus :data:`NOT_IN_KEY`), tuples as lists, tensors
    by fingerprint, floats checked finite; anything else raises ``TypeError``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _canonical(v) for k, v in dataclasses.asdict(obj).items() if k not in NOT_IN_KEY}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"cache_key: dict keys must be str, got {list(obj)[:3]}")
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Tensor):
        return {"tensor_sha256": fingerprint_tensor(obj)}
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"cache_key: non-finite float {obj}")
        return obj
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cache_key: cannot key on a {type(obj).__name__}; pass str/int/float/bool/None, "
                    "lists, dicts, dataclasses or tensors")


def cache_key(*parts) -> str:
    """sha256 hex digest of the canonical JSON of ``[FORMAT_VERSION, *parts]``.

    Canonical: sorted keys, no whitespace, UTF-8; dataclasses (e.g. :class:`SolverArguments`)
    become dicts without the :data:`NOT_IN_KEY` fields; tensors are keyed by
    :func:`fingerprint_tensor`. Python floats are written by ``repr`` (round-trip exact), so
    0.1 and 0.1000001 are different keys, and 1 and 1.0 are too (int vs float).

    Raises:
        TypeError: a part that has no canonical form (e.g. an arbitrary object).
    """
    text = json.dumps([FORMAT_VERSION, *(_canonical(p) for p in parts)], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class STestCache:
    """A folder of ``<key>.safetensors`` files, one tensor (plus string metadata) per key.

    Safe for several processes: :meth:`put` writes a temp file in the same folder, fsyncs it and
    ``os.replace``s it into place (atomic on POSIX and Windows), so :meth:`get` sees either
    no file or a whole one; a temp file left by a crashed writer is never read (its name is not
    a key). A file that fails to load (truncated, corrupt, wrong layout) counts as a miss and is
    removed, so the next :meth:`put` rewrites it.

    Args:
        directory: created if missing (``~`` expanded).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of ``key``. Raises ``ValueError`` unless ``key`` is a sha256 hex digest."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"cache key {key!r}: expected a 64-character lowercase sha256 hex digest (cache_key())")
        return self.directory / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[Tensor, dict] | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor(_TENSOR)
            return tensor, json.loads(meta.get("metadata", "{}"))
        except Exception:  # corrupt, truncated, foreign file: a miss, and gone
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            return None

    def get_entry(self, key: str) -> tuple[Tensor, dict] | None:
        """``(tensor, metadata)`` of ``key`` read from one file (so the two always belong
        together), or ``None`` on a miss."""
        return self._load(key)

    def get(self, key: str) -> Tensor | None:
        """The cached CPU tensor of ``key`` (bit-identical to what was put), or ``None``."""
        entry = self._load(key)
        return None if entry is None else entry[0]

    def put(self, key: str, tensor: Tensor, metadata: dict | None = None) -> Path:
        """Store ``tensor`` (detached, moved to CPU) under ``key``, atomically; returns the path.

        ``metadata``: JSON-serialisable dict kept beside the tensor (no tensors inside).
        On any error the temp file is removed and the previous entry, if any, is left intact.
        """
        from safetensors.torch import save_file

        path = self.path(key)
        meta = {"metadata": json.dumps(metadata or {}, sort_keys=True), "format": FORMAT_VERSION}
        tensors = {_TENSOR: tensor.detach().cpu().contiguous().clone()}
        return atomic_write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def clear(self) -> int:
        """Remove every entry and stray temp file; returns how many files were removed."""
        removed = 0
        for p in [*self.directory.glob("*.safetensors"), *self.directory.glob(".*.tmp")]:
            p.unlink(missing_ok=True)
            removed += 1
        return removed
