"""The Explainer's reuse of s_test and scores (issue #3, capability 6) and its top-k stability
diagnostic across LiSSA repeats (capability 7), on a tiny BERT: a second explanation of the same
rows solves nothing and gives the same records; a changed model, training set or argument
misses; a partly cached chunk solves only its missing rows and equals an uncached run."""

import dataclasses
import json

import pytest
import torch

import hf_pairdots.explain as explain_mod
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.influence import train_influence
from hf_pairdots.modeling import predict_proba
from hf_pairdots.models import tiny_bert
from hf_pairdots.solve import compute_s_test
from hf_pairdots.stability import topk_overlap

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["a good movie", "a bad movie", "great fun", "boring and slow", "the plot was great", "awful acting",
         "a lovely film", "a dull story", "fun and warm", "a terrible mess", "the best scene", "the worst scene",
         "warm and funny", "slow and dull", "a fine cast", "a weak script"]
LABELS = [1, 0] * 8
TEXTS = ["a good fun movie", "a bad dull plot", "the scene was warm"]
# λ and σ near what the automatic choice gives for this model at depth 40 (3.56, 15.5): LiSSA
# converges (relative residual about 1 %; mini-batches of 8 of the 16 rows, with 4 it is 10 %);
# fixed values skip the eigenvalue estimates.
SOLVER = dict(solver="lissa", damping=3.5, scale=15.2, depth=40, batch_size=8)


@pytest.fixture(scope="module")
def model():
    return tiny_bert(initializer_range=0.1, seed=1)


@pytest.fixture(scope="module")
def queries(model, tok):
    """Three queries whose gold label is the one the model does not predict: two rows each."""
    probs = predict_proba(model, tok, TEXTS, max_length=16)
    return [Query(i, text, 1 - int(probs[i].argmax())) for i, text in enumerate(TEXTS)]


def _args(cache_dir=None, **solver):
    # the paper's saliency: the measured overlaps and spreads below are its rows'
    return ExplainArguments(queries="all", top_k=3, max_length=16, batch_size=4, saliency_mode="gradient",
                            solver=SolverOptions(**{**SOLVER, **solver, "cache_dir": cache_dir}))


@pytest.fixture
def solves(monkeypatch):
    """Rows of every compute_s_test call and the number of training passes of the Explainer."""
    log = {"rows": [], "train_passes": 0, "repeats": []}
    solve, score = explain_mod.compute_s_test, explain_mod.sharded_train_influence

    def counted_solve(objective, data, v, options, **kwargs):
        log["rows"].append(v.shape[0])
        result = solve(objective, data, v, options, **kwargs)
        if result.repeats is not None:
            log["repeats"].append((v.clone(), result.repeats.clone()))
        return result

    def counted_score(*args):
        log["train_passes"] += 1
        return score(*args)

    monkeypatch.setattr(explain_mod, "compute_s_test", counted_solve)
    monkeypatch.setattr(explain_mod, "sharded_train_influence", counted_score)
    return log


def _without_cached(records):
    out = json.loads(json.dumps([r.to_dict() for r in records]))  # also: the records are JSON (no tensors)
    for record in out:
        record["diagnostics"].pop("cached")
    return out


def _influences(records):
    return torch.tensor([e.influence for r in records for lab in r.labels for e in lab.top_train])


def test_second_explain_solves_nothing_and_returns_the_same_records(model, tok, queries, solves, tmp_path):
    # Automatic λ and σ: each Explainer resolves them again, to the same floats, so they share entries.
    args = _args(tmp_path, damping=None, scale=None)
    first = Explainer(model, tok, TRAIN, LABELS, args).explain(queries)
    assert solves["rows"] == [6] and solves["train_passes"] == 1  # 3 queries x 2 labels, one solve
    assert all(r.diagnostics.cached == [False, False] for r in first)
    assert all(max(r.diagnostics.relative_residual) < 0.03 for r in first)  # converged: ~1 %
    assert len(list(tmp_path.glob("*.safetensors"))) == 12  # s_test + scores per row

    again = Explainer(model, tok, TRAIN, LABELS, args)
    second = again.explain(queries)
    assert solves["rows"] == [6] and solves["train_passes"] == 1  # no solve, no training pass
    assert all(r.diagnostics.cached == [True, True] for r in second)
    assert _without_cached(second) == _without_cached(first)  # bit for bit, diagnostics included
    assert second[0].diagnostics.damping == again.solver.damping == pytest.approx(3.56, rel=0.02)

    # top_k is not in the key: a smaller top-k reads the same scores and keeps their ranking.
    top2 = Explainer(model, tok, TRAIN, LABELS, dataclasses.replace(args, top_k=2)).explain(queries)
    assert solves["rows"] == [6]
    assert [e.train_index for e in top2[1].labels[0].top_train] == \
        [e.train_index for e in first[1].labels[0].top_train[:2]]


@pytest.mark.parametrize("change", ["damping", "training_set", "max_length", "model", "label_smoothing",
                                    "class_weights"])
def test_changed_argument_data_or_model_misses(model, tok, queries, solves, tmp_path, change):
    Explainer(model, tok, TRAIN, LABELS, _args(tmp_path)).explain(queries[:1])
    assert solves["rows"] == [2]
    texts, labels, args, other = TRAIN, LABELS, _args(tmp_path), model
    if change == "damping":
        args = _args(tmp_path, damping=3.6)
    elif change == "training_set":
        labels = LABELS[:-1] + [1 - LABELS[-1]]  # one flipped label
    elif change == "max_length":
        args = dataclasses.replace(args, max_length=15)
    elif change in ("label_smoothing", "class_weights"):  # another loss: another H and other training gradients
        args = dataclasses.replace(args, **{"label_smoothing": 0.1} if change == "label_smoothing"
                                   else {"class_weights": [1.0, 2.0]})
    else:
        other = tiny_bert(initializer_range=0.1, seed=1)
        with torch.no_grad():
            other.bert.embeddings.word_embeddings.weight[2000, 0] += 1e-3  # below θ_S ("head")
    records = Explainer(other, tok, texts, labels, args).explain(queries[:1])
    assert solves["rows"] == [2, 2]
    assert records[0].diagnostics.cached == [False, False]
    assert len(list(tmp_path.glob("*.safetensors"))) == 8  # both entries kept side by side


def test_partly_cached_chunk_solves_only_missing_rows(model, tok, queries, solves, tmp_path):
    explainer = Explainer(model, tok, TRAIN, LABELS, _args(tmp_path))
    explainer.explain(queries[:2])
    assert solves["rows"] == [4]
    mixed = explainer.explain(queries)
    assert solves["rows"] == [4, 2]  # only the third query's two rows are solved
    assert [r.diagnostics.cached for r in mixed] == [[True, True], [True, True], [False, False]]

    reference = Explainer(model, tok, TRAIN, LABELS, _args(None)).explain(queries)
    assert solves["rows"] == [4, 2, 6]
    assert [[e.train_index for lab in r.labels for e in lab.top_train] for r in mixed] == \
        [[e.train_index for lab in r.labels for e in lab.top_train] for r in reference]
    got, want = _influences(mixed), _influences(reference)
    assert want.abs().max() > 1e-4  # real scores, not zeros
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    for a, b in zip(mixed, reference):
        assert a.diagnostics.relative_residual == pytest.approx(b.diagnostics.relative_residual, rel=1e-3)
        for la, lb in zip(a.labels, b.labels):
            for ea, eb in zip(la.top_train, lb.top_train):
                assert ea.word_influence == pytest.approx(eb.word_influence, rel=1e-4, abs=1e-9)


def test_topk_overlap_across_repeats_is_reported_and_cached(model, tok, queries, solves, tmp_path):
    # Mini-batches of 2 of the 16 training examples: the two repeats disagree a little.
    # The raw ranking: the measured overlaps below are those of Eq. 5's scores.
    args = dataclasses.replace(_args(tmp_path, repeat=2, batch_size=2), batch_size=2, ranking="raw")
    explainer = Explainer(model, tok, TRAIN, LABELS, args)
    first = explainer.explain(queries)
    [(v, repeats)] = solves["repeats"]  # compute_s_test got keep_repeats: (R, Q, P) solutions
    assert repeats.shape == (2, 6, v.shape[1])
    by_hand = topk_overlap([train_influence(explainer.objective, explainer.data, repeats[r]) for r in range(2)], 3)
    overlap = [x for r in first for x in r.diagnostics.topk_overlap]
    assert overlap == pytest.approx(by_hand, abs=1e-12)
    assert all(x in (0.0, 0.2, 0.5, 1.0) for x in overlap)  # R = 2, k = 3: |T_a ∩ T_b| / |T_a ∪ T_b|
    assert min(overlap) == 0.5 and max(overlap) == 1.0  # measured: one row swaps its third example
    spread = [x for r in first for x in r.diagnostics.repeat_relative_spread]
    assert all(0.05 < x < 0.5 for x in spread)  # measured 18-21 % (random rows: 2 of 16 per step)

    second = explainer.explain(queries)  # the per-repeat scores come back from the cache
    assert solves["rows"] == [6]
    assert _without_cached(second) == _without_cached(first)
    assert len(list(tmp_path.glob("*.safetensors"))) == 18  # s_test, scores, per-repeat scores


def test_topk_overlap_is_one_when_every_step_sees_the_whole_training_set(model, tok, queries, tmp_path):
    # Solver mini-batch >= n: every LiSSA step multiplies by the full-data Hessian, so the repeats
    # run the same recursion (only the order of the batch sums differs) and pick the same top-k.
    args = dataclasses.replace(_args(None, repeat=2, batch_size=len(TRAIN)), batch_size=8)
    records = Explainer(model, tok, TRAIN, LABELS, args).explain(queries)
    for record in records:
        assert record.diagnostics.topk_overlap == [1.0, 1.0]
        assert max(record.diagnostics.repeat_relative_spread) < 1e-6  # measured ~2e-8
    single = Explainer(model, tok, TRAIN, LABELS, _args(None)).explain(queries[:1])
    assert single[0].diagnostics.topk_overlap is None  # repeat = 1: nothing to compare
    assert "topk_overlap" not in single[0].to_dict()["diagnostics"]


def test_compute_s_test_passes_keep_repeats(model, tok, queries, tmp_path):
    explainer = Explainer(model, tok, TRAIN, LABELS, _args(None))
    v = torch.randn(3, explainer.objective.params.numel, generator=torch.Generator().manual_seed(0))
    options = SolverOptions(**SOLVER, repeat=3, keep_repeats=True)
    result = compute_s_test(explainer.objective, explainer.data, v, options)
    assert result.repeats.shape == (3, 3, v.shape[1])
    assert torch.allclose(result.repeats.mean(0), result.x, rtol=1e-5, atol=1e-7)
    plain = compute_s_test(explainer.objective, explainer.data, v, dataclasses.replace(options, keep_repeats=False))
    assert "repeats" not in plain.diagnostics
    assert torch.equal(plain.x, result.x)  # keeping the repeats changes nothing else


def test_only_the_main_process_reads_and_writes(model, tok, queries, solves, tmp_path, monkeypatch):
    explainer = Explainer(model, tok, TRAIN, LABELS, _args(tmp_path))
    explainer.explain(queries[:1])
    monkeypatch.setattr(explain_mod, "is_main_process", lambda: False)
    records = explainer.explain(queries[:2])  # a rank > 0 would get rank 0's lookups by broadcast
    assert solves["rows"] == [2, 4]
    assert records[0].diagnostics.cached == [False, False]
    assert len(list(tmp_path.glob("*.safetensors"))) == 4  # nothing written by a rank > 0


def test_eq8_variants_prepared_once_per_training_example(model, tok, queries, monkeypatch):
    """The erased variants of a responsible training example are prepared once per Explainer:
    a later chunk whose top-k holds the same examples prepares nothing, and its Eq. 8 word
    scores equal those of a fresh Explainer exactly."""
    prepared = []
    original = explain_mod.prepare_word_variants

    def counted(objective, tokenizer, text, label, **kwargs):
        prepared.append(text)
        return original(objective, tokenizer, text, label, **kwargs)

    monkeypatch.setattr(explain_mod, "prepare_word_variants", counted)
    explainer = Explainer(model, tok, TRAIN, LABELS, _args())
    first = explainer.explain(queries[:1])
    n_first = len(prepared)
    assert n_first == len({e.train_index for lab in first[0].labels for e in lab.top_train})
    again = explainer.explain(queries[:1])
    assert len(prepared) == n_first  # every variant batch reused
    fresh = Explainer(model, tok, TRAIN, LABELS, _args()).explain(queries[:1])
    assert _without_cached(again) == _without_cached(fresh) == _without_cached(first)
