"""benchmarks/bench_attack.py: its metrics (hand-checked), and every baseline's training set on a
tiny BERT (the same rows, the same budget, random rows disjoint from the influence rows,
relabelling flips, removal removes, seeded determinism)."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "golden"))

import bench_attack  # noqa: E402
from make_golden import sentiment_dataset, sentiment_rows, trained_tiny_bert  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("successes, n, expected", [
    (0, 10, (0.0, 0.2775)),  # hand-checked: centre = half-width = (z²/2n) / (1 + z²/n)
    (5, 10, (0.2366, 0.7634)),
    (1, 3, (0.0615, 0.7923)),
    (10, 10, (0.7225, 1.0)),
])
def test_wilson_interval_matches_hand_checked_values(successes, n, expected):
    lo, hi = bench_attack.wilson(successes, n)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="need n >= 1"):
        bench_attack.wilson(3, 2)
    with pytest.raises(ValueError, match="need n >= 1"):
        bench_attack.wilson(0, 0)


def test_flips_and_summary_pool_seeds():
    assert bench_attack.flips([1, 0, 0], [1, 1, 0]) == [False, True, False]
    with pytest.raises(ValueError, match="2 predictions for 3"):
        bench_attack.flips([1, 0], [1, 1, 0])
    jobs = [{"protocol": "warm", "method": "saliency", "k": 1, "seed": s, "flips": f, "targeted_accuracy": 1 - sum(f) / 4,
             "collateral_accuracy": c, "edits": 4, "rows_per_query": 1.0, "seconds": 2.0}
            for s, f, c in ((0, [True, False, False, False], 0.8), (1, [True, True, False, False], 0.9))]
    n = bench_attack.summarise(jobs)[("warm", "saliency", 1)]
    assert (n["flips"], n["trials"], n["seeds"]) == (3, 8, 2)
    assert n["targeted"][0] == pytest.approx(0.625) and n["targeted"][1] == pytest.approx(0.1767767, abs=1e-6)
    assert n["collateral"][0] == pytest.approx(0.85)
    assert n["wilson"] == pytest.approx(bench_attack.wilson(3, 8))


def test_removed_and_relabelled_change_exactly_the_rows():
    train = sentiment_dataset(sentiment_rows(0, 10))
    kept = bench_attack.removed(train, [7, 2, 2])
    assert len(kept) == 8 and kept["text"] == [t for i, t in enumerate(train["text"]) if i not in (2, 7)]
    flipped = bench_attack.relabelled(train, [0, 3])
    assert flipped["label"] == [1 - y if i in (0, 3) else y for i, y in enumerate(train["label"])]
    assert flipped["text"] == train["text"]


def test_relabelled_rejects_multiclass():
    import datasets

    train = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 2]}).cast_column(
        "label", datasets.ClassLabel(names=["x", "y", "z"]))
    with pytest.raises(ValueError, match="binary"):
        bench_attack.relabelled(train, [0])


@pytest.fixture(scope="module")
def tiny_attack(tok, lexicon, tmp_path_factory):
    """A tiny BERT, its saliency explanations (attack_combined, k up to 2) of 4 correct queries and
    the loss-chosen edits."""
    import common
    from hf_pairdots.explain import Explainer

    train = sentiment_dataset(sentiment_rows(0, 40))
    queries = sentiment_dataset(sentiment_rows(1, 4))
    model = trained_tiny_bert(tok, train)
    config = {"params": "head", "solver": "lissa", "depth": 20, "num_sampled": 1, "max_candidates": 4,
              "num_queries": 4, "max_length": 16, "seeds": [0], "top_k": None}
    made = common.explain_with_edits(config, model, tok, train, queries, tmp_path_factory.mktemp("explain"),
                                     selection="all", objective=bench_attack.OBJECTIVE, per_query=2)
    explainer = Explainer(model, tok, train["text"], train["label"], made.args)
    loss = bench_attack.loss_edits(explainer, train, queries, [1, 2], num_sampled=1, max_candidates=4)
    return Namespace(train=train, made=made, loss=loss, tok=tok)


def test_loss_edits_keep_labels_budget_and_use_a_row_once(tiny_attack):
    train = tiny_attack.train
    for k, edits in tiny_attack.loss.items():
        sources = edits["source_train_index"]
        assert len(set(sources)) == len(sources) and 0 < len(edits) <= 4 * k
        assert max(edits["query_index"].count(q) for q in set(edits["query_index"])) <= k
        assert edits["label"] == [train["label"][i] for i in sources]
        assert all(t != train["text"][i] for t, i in zip(edits["text"], sources))
        assert set(edits["objective"]) == {bench_attack.LOSS_GOAL} and set(edits["relation"]) == {"synonym"}


def test_baselines_share_rows_and_budget(tiny_attack):
    t = tiny_attack
    a = Namespace(ks=[1, 2], max_candidates=4, max_length=16)
    sets = bench_attack.training_sets(a, t.made, t.loss, t.train, t.tok, seed=3, k=2)
    edited = sets["saliency"][0]
    rows = [i for i, flag in enumerate(edited["edited"]) if flag]
    n = sets["saliency"][1]
    assert n == len(rows) > 0
    same = sets["random_same"][0]
    assert [i for i, flag in enumerate(same["edited"]) if flag] == rows and set(same.filter(
        lambda r: r["edited"])["stage"]) == {"random"}
    random_rows = [i for i, flag in enumerate(sets["random_rows"][0]["edited"]) if flag]
    assert len(random_rows) == sets["random_rows"][1] == n
    assert not set(random_rows) & (set(rows) | set(t.loss[2]["source_train_index"]))
    assert len(sets["remove"][0]) == len(t.train) - n
    assert sets["remove"][0]["text"] == [x for i, x in enumerate(t.train["text"]) if i not in set(rows)]
    labels = sets["relabel"][0]["label"]
    assert [i for i, (y, y0) in enumerate(zip(labels, t.train["label"])) if y != y0] == rows
    assert all(len(d) == len(t.train) for m, (d, _, _) in sets.items() if m != "remove")
    again = bench_attack.training_sets(a, t.made, t.loss, t.train, t.tok, seed=3, k=2)
    other = bench_attack.training_sets(a, t.made, t.loss, t.train, t.tok, seed=4, k=2)
    for method in ("random_same", "random_rows"):
        assert again[method][0]["text"] == sets[method][0]["text"]
    assert other["random_rows"][0]["text"] != sets["random_rows"][0]["text"]


def test_edits_from_proposals_rejects_bad_rows():
    from hf_pairdots.augment.dataset import edits_from_proposals
    from hf_pairdots.records import ProposedEdit

    train = sentiment_dataset(sentiment_rows(0, 4))
    edit = ProposedEdit("attack_down", text="x", position=0, char_start=0, char_end=1, original="a", replacement="x",
                        relation="synonym", stage="two-stage")
    made = edits_from_proposals(train, [(2, 0, "attack_down", edit)])
    assert made["text"] == ["x"] and made["source_train_index"] == [2] and made["label"] == [train["label"][2]]
    with pytest.raises(ValueError, match="outside the training set of 4"):
        edits_from_proposals(train, [(4, 0, "attack_down", edit)])
    with pytest.raises(ValueError, match="objective 'loss'"):
        edits_from_proposals(train, [(1, 0, "loss", edit)])
