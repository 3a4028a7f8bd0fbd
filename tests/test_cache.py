"""The on-disk s_test cache: keys change exactly when what s_test depends on changes; entries
round-trip bit for bit; writes are atomic; corrupt files are misses."""

import dataclasses
import os
import threading

import pytest
import torch

from hf_pairdots import cache as cache_mod
from hf_pairdots.arguments import SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.cache import STestCache, cache_key, fingerprint_model, fingerprint_tensor, fingerprint_texts
from hf_pairdots.models import tiny_bert

TEXTS = ["a good movie", "a bad movie", "great fun"]
LABELS = [1, 0, 1]


def _key(model, params="head", texts=TEXTS, labels=LABELS, options=None, measurement=("saliency", 0, 1)):
    pset = select_parameters(model, params)
    return cache_key("s_test", fingerprint_model(model, pset), fingerprint_texts(texts, labels),
                     options or SolverOptions(damping=0.1, scale=2.0), {"params": params, "max_length": 32},
                     list(measurement))


def test_same_inputs_same_key():
    a, b = tiny_bert(seed=0), tiny_bert(seed=0)  # two separate but equal models
    assert _key(a) == _key(b)
    assert len(_key(a)) == 64 and int(_key(a), 16) >= 0


def test_weight_change_changes_key():
    model = tiny_bert(seed=0)
    before = _key(model)
    with torch.no_grad():
        model.classifier.weight[0, 0] += 1e-6  # inside θ_S
    assert _key(model) != before
    model = tiny_bert(seed=0)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5, 0] += 1e-6  # below θ_S: changes its inputs
    assert _key(model) != before
    pset = select_parameters(model, "head")
    assert fingerprint_model(model, pset, include_rest=False) == fingerprint_model(
        tiny_bert(seed=0), select_parameters(tiny_bert(seed=0), "head"), include_rest=False)
    assert _key(tiny_bert(seed=1)) != before
    assert _key(tiny_bert(seed=0), params="top") != before


def test_dtype_and_config_change_key():
    model = tiny_bert(seed=0)
    pset = select_parameters(model, "head")
    fp = fingerprint_model(model, pset)
    double = tiny_bert(seed=0).double()
    assert fingerprint_model(double, select_parameters(double, "head")) != fp
    other = tiny_bert(seed=0)
    other.config.hidden_dropout_prob = 0.3
    assert fingerprint_model(other, select_parameters(other, "head")) != fp


def test_data_change_changes_key():
    model = tiny_bert(seed=0)
    before = _key(model)
    assert _key(model, texts=["a good movie", "a bad movie", "great fun!"]) != before
    assert _key(model, labels=[1, 0, 0]) != before
    assert _key(model, texts=TEXTS[::-1], labels=LABELS[::-1]) != before  # order matters
    # length-prefixed: moving a word across the text boundary is a different data set
    assert fingerprint_texts(["ab", "c"], [0, 0]) != fingerprint_texts(["a", "bc"], [0, 0])
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        fingerprint_texts(TEXTS, [1, 0])


def test_argument_change_changes_key():
    model = tiny_bert(seed=0)
    base = SolverOptions(damping=0.1, scale=2.0)
    before = _key(model, options=base)
    for change in [dict(damping=0.2), dict(scale=3.0), dict(depth=100), dict(repeat=2), dict(seed=1),
                   dict(batch_size=64), dict(solver="cg")]:
        assert _key(model, options=dataclasses.replace(base, **change)) != before, change
    assert _key(model, measurement=("saliency", 0, 0)) != before
    # fields that do not change s_test are not in the key
    assert _key(model, options=dataclasses.replace(base, keep_repeats=True, cache_dir="/tmp/x")) == before
    assert cache_key({"a": 1, "b": [1.0, None]}) == cache_key({"b": [1.0, None], "a": 1})  # canonical
    assert cache_key(1) != cache_key(1.0) != cache_key("1")
    assert cache_key(torch.ones(3)) == cache_key(torch.ones(3)) != cache_key(torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="cannot key on a object"):
        cache_key(object())
    with pytest.raises(ValueError, match="non-finite"):
        cache_key(float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_bit_identical(tmp_path, dtype):
    store = STestCache(tmp_path / "c")
    s = (torch.randn(4, 37, generator=torch.Generator().manual_seed(0)) * 1e-3).to(dtype)
    s[0, 0] = -0.0
    key = cache_key("x", str(dtype))
    assert store.get(key) is None and store.get_entry(key) is None and key not in store
    store.put(key, s, metadata={"damping": 0.1, "relative_residual": [0.01]})
    got = store.get(key)
    assert got.dtype == s.dtype and got.shape == s.shape
    assert torch.equal(got.view(torch.uint8), s.view(torch.uint8))
    assert fingerprint_tensor(got) == fingerprint_tensor(s)
    tensor, meta = store.get_entry(key)  # both from one read of the file
    assert torch.equal(tensor.view(torch.uint8), s.view(torch.uint8))
    assert meta == {"damping": 0.1, "relative_residual": [0.01]}
    assert key in store


def test_keys_are_validated(tmp_path):
    store = STestCache(tmp_path)
    for bad in ["../etc/passwd", "abc", "A" * 64]:
        with pytest.raises(ValueError, match="sha256 hex digest"):
            store.get(bad)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    store = STestCache(tmp_path)
    key = cache_key("fail")
    old = torch.arange(6.0)
    store.put(key, old)

    def crash(src, dst):
        with open(src, "r+b") as f:  # the temp file was written; the process dies before the rename
            f.truncate(10)
        raise OSError("simulated crash")

    monkeypatch.setattr(cache_mod.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.put(key, torch.zeros(6))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.safetensors"]  # no temp file left
    assert torch.equal(store.get(key), old)  # the previous entry is intact

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", die)
    new_key = cache_key("never written")
    with pytest.raises(KeyboardInterrupt):
        store.put(new_key, torch.zeros(2))
    assert store.get(new_key) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.safetensors"]


def test_concurrent_writers_and_readers(tmp_path):
    store = STestCache(tmp_path)
    key = cache_key("shared")
    value = torch.randn(64, 512, generator=torch.Generator().manual_seed(1))
    seen, errors = [], []

    def writer():
        try:
            for _ in range(5):
                STestCache(tmp_path).put(key, value)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def reader():
        for _ in range(20):
            got = STestCache(tmp_path).get(key)
            if got is not None:
                seen.append(torch.equal(got, value))

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(seen)  # a reader never saw a partial or foreign tensor
    assert torch.equal(store.get(key), value)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not safetensors", None])
def test_corrupt_file_is_a_miss_and_removed(tmp_path, content):
    store = STestCache(tmp_path)
    key = cache_key("corrupt", repr(content))
    store.put(key, torch.arange(1000.0))
    path = store.path(key)
    if content is None:  # truncated in the middle of the data
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 100])
    else:
        path.write_bytes(content)
    assert store.get(key) is None
    assert not path.exists()
    store.put(key, torch.ones(2))  # and the next put rewrites it
    assert torch.equal(store.get(key), torch.ones(2))


def test_clear(tmp_path):
    store = STestCache(tmp_path)
    for i in range(3):
        store.put(cache_key(i), torch.ones(1))
    (tmp_path / ".stray.tmp").write_bytes(b"x")
    assert store.clear() == 4
    assert not list(tmp_path.iterdir())
    assert os.path.isdir(tmp_path)
