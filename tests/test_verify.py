"""hf_pairdots.verify: retraining checks of an explanation run.

Planning and aggregation against numbers worked out by hand; an end-to-end check on a tiny BERT
whose classifier alone is trained (a convex problem on frozen features) with a training set
built so that the query's own text occurs 12 times with its gold label and 4 times with the
other: removing the examples of largest influence on the query's loss must lower that loss, and
removing those of smallest influence must raise it; resuming skips finished jobs.
"""

import json
import math

import datasets
import numpy as np
import pytest
import torch

from hf_pairdots import verify
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import explain_dataset
from hf_pairdots.errors import IncompatibleRunError
from hf_pairdots.models import tiny_bert
from hf_pairdots.training import train_classifier
from hf_pairdots.verify import (
    VerifyArguments,
    aggregate,
    build_plan,
    effect_ratio,
    plan_lds_subsets,
    plan_removals,
    predicted_change,
    sign_agreement,
    spearman,
    verify_run,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["neg", "pos"]


# ------------------------------------------------------------------------------ planning


def test_plan_removals_by_hand():
    scores = np.array([[0.5, -2.0, 3.0, 0.0, 1.0, -1.0, 2.0, -3.0, 0.1, 0.2],
                       [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 5.0, -5.0]])
    plans = plan_removals(scores, 2, random_sets=2, seed=3)
    assert plans[0]["top"].tolist() == [2, 6]  # 3.0, 2.0
    assert plans[0]["bottom"].tolist() == [7, 1]  # -3.0, -2.0
    assert plans[1]["top"].tolist() == [8, 0]  # 5.0, then the first of the tied 1.0s
    assert plans[1]["bottom"].tolist() == [9, 6]
    for row, plan in enumerate(plans):
        targeted = set(plan["top"]) | set(plan["bottom"])
        assert len(targeted) == 4
        for random_set in plan["random"]:
            assert len(random_set) == 2 == len(set(random_set)) and not targeted & set(random_set)
            assert list(random_set) == sorted(random_set)
        assert plan["random"][0].tolist() != plan["random"][1].tolist() or row > 1
    again = plan_removals(scores, 2, random_sets=2, seed=3)
    other = plan_removals(scores, 2, random_sets=2, seed=4)
    assert all(a["random"][j].tolist() == b["random"][j].tolist() for a, b in zip(plans, again) for j in range(2))
    assert any(a["random"][j].tolist() != b["random"][j].tolist() for a, b in zip(plans, other) for j in range(2))
    with pytest.raises(ValueError, match="k=4"):
        plan_removals(scores, 4)  # 3 x 4 > 10
    assert len(plan_removals(scores, 5, random_sets=0)[0]["top"]) == 5  # 2 x 5 <= 10 without random sets


def test_predicted_change_and_lds_subsets_by_hand():
    scores = np.array([[2.0, -1.0, 4.0, 0.0], [1.0, 1.0, -3.0, 2.0]])
    assert predicted_change(scores, [0, 2]).tolist() == [-1.5, 0.5]  # -(2 + 4)/4, -(1 - 3)/4
    assert predicted_change(scores, [0, 2], weight=1.0).tolist() == [1.5, -0.5]
    subsets = plan_lds_subsets(10, 3, 0.3, seed=1)
    assert [len(s) for s in subsets] == [3, 3, 3]
    assert all(list(s) == sorted(set(s)) and 0 <= s.min() and s.max() < 10 for s in subsets)
    assert [s.tolist() for s in subsets] == [s.tolist() for s in plan_lds_subsets(10, 3, 0.3, seed=1)]


def test_build_plan_maps_columns_to_training_rows():
    scores = np.array([[3.0, -3.0, 0.0, 1.0, -1.0, 0.5, 0.2, -0.2]])
    train_rows = [0, 1, 3, 4, 5, 6, 8, 9]  # rows 2 and 7 of the training set were not scored
    args = VerifyArguments(k=2, protocol="warm", upweight=True, lds_subsets=2, lds_fraction=0.5)
    plan = build_plan(scores, train_rows, args)
    assert plan["k"] == 2 and plan["n"] == 8
    jobs = {job["id"]: job for job in plan["jobs"]}
    assert list(jobs) == ["warm-full", "warm-top-r0-0", "warm-bottom-r0-0", "warm-top_up-r0-0", "warm-bottom_up-r0-0",
                          "warm-random-r0-0", "warm-lds-0", "warm-lds-1"]
    assert jobs["warm-top-r0-0"]["remove"] == [0, 4]  # columns 0 (3.0) and 3 (1.0)
    assert jobs["warm-top-r0-0"]["predicted"] == [-0.5]  # -(3 + 1) / 8
    assert jobs["warm-bottom-r0-0"]["remove"] == [1, 5] and jobs["warm-bottom-r0-0"]["predicted"] == [0.5]
    assert jobs["warm-top_up-r0-0"]["add"] == [0, 4] and jobs["warm-top_up-r0-0"]["remove"] == []
    assert jobs["warm-top_up-r0-0"]["predicted"] == [0.5]
    assert len(jobs["warm-lds-0"]["remove"]) == 4 and not {2, 7} & set(jobs["warm-lds-0"]["remove"])
    assert jobs["warm-full"]["remove"] == [] and jobs["warm-full"]["predicted"] is None
    assert build_plan(scores, train_rows, VerifyArguments(k_fraction=0.25))["k"] == 2  # 0.25 x 8


def test_verify_arguments_validate():
    with pytest.raises(ValueError, match="init_model"):
        VerifyArguments(protocol="both")
    with pytest.raises(ValueError, match="protocol"):
        VerifyArguments(protocol="cold")
    with pytest.raises(ValueError, match="lds_subsets"):
        VerifyArguments(lds_subsets=1)
    with pytest.raises(ValueError, match="k_fraction"):
        VerifyArguments(k_fraction=1.5)
    with pytest.raises(ValueError, match="k="):
        VerifyArguments(k=0)
    args = VerifyArguments(protocol="both", init_model="base", max_workers=2)
    assert args.protocols == ("initial", "warm")
    assert VerifyArguments.from_dict(args.to_dict()) == args
    assert args.differences(VerifyArguments(protocol="both", init_model="base", max_workers=1)) == []
    assert args.differences(VerifyArguments(protocol="both", init_model="base", k=3)) == ["k"]


# --------------------------------------------------------------------------- aggregation


def test_statistics_by_hand():
    assert sign_agreement([1.0, -2.0, 3.0, -1.0], [0.5, 1.0, 2.0, -0.1]) == 0.75
    assert effect_ratio([-2.0, 4.0], [1.0, -0.5]) == 4.0  # mean 3 / mean 0.75
    assert spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)  # 1 - 6 x 2 / (3 x 8)
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))
    assert effect_ratio([1.0], [0.0]) == math.inf


def test_aggregate_by_hand():
    """Two rows, one protocol; Δm = measurements - the full job's [10, 20]."""
    jobs = [
        {"id": "warm-full", "protocol": "warm", "kind": "full", "row": None, "predicted": None},
        {"id": "warm-top-r0-0", "protocol": "warm", "kind": "top", "row": 0, "predicted": [-1.0, 0.3]},
        {"id": "warm-bottom-r0-0", "protocol": "warm", "kind": "bottom", "row": 0, "predicted": [2.0, 0.0]},
        {"id": "warm-random-r0-0", "protocol": "warm", "kind": "random", "row": 0, "predicted": [0.1, 0.1]},
        {"id": "warm-top-r1-0", "protocol": "warm", "kind": "top", "row": 1, "predicted": [0.0, -4.0]},
        {"id": "warm-bottom-r1-0", "protocol": "warm", "kind": "bottom", "row": 1, "predicted": [0.0, 3.0]},
        {"id": "warm-random-r1-0", "protocol": "warm", "kind": "random", "row": 1, "predicted": [0.2, -0.2]},
        {"id": "warm-lds-0", "protocol": "warm", "kind": "lds", "row": None, "predicted": [1.0, 1.0]},
        {"id": "warm-lds-1", "protocol": "warm", "kind": "lds", "row": None, "predicted": [2.0, 2.0]},
        {"id": "warm-lds-2", "protocol": "warm", "kind": "lds", "row": None, "predicted": [3.0, 3.0]},
    ]
    measured = {"warm-full": [10, 20], "warm-top-r0-0": [8, 99], "warm-bottom-r0-0": [13, 99],
                "warm-random-r0-0": [10.5, 21], "warm-top-r1-0": [99, 22], "warm-bottom-r1-0": [99, 24],
                "warm-random-r1-0": [9.5, 19], "warm-lds-0": [11, 21], "warm-lds-1": [12, 23], "warm-lds-2": [13, 22]}
    results = {key: {"measurements": value, "seconds": 1.0} for key, value in measured.items()}
    out = aggregate({"jobs": jobs}, results, 2)["warm"]
    row0, row1 = out["rows"]
    # Row 0: top -1 -> -2, bottom 2 -> 3 agree; random Δ 0.5 (own) and -0.5 (row 1's set).
    assert [(p["kind"], p["predicted"], p["actual"]) for p in row0["pairs"]] == [
        ("top", -1.0, -2.0), ("bottom", 2.0, 3.0), ("random", 0.1, 0.5)]
    assert row0["sign_agreement"] == 1.0 and row0["direction_right"]
    assert row0["targeted_effect"] == 2.5 and row0["random_effect"] == 0.5 and row0["ratio"] == 5.0
    assert row0["lds"] == pytest.approx(1.0)  # Δ 1, 2, 3 against 1, 2, 3
    # Row 1: top -4 -> +2 disagrees, bottom 3 -> 4 agrees; random Δ 1 and -1.
    assert row1["sign_agreement"] == 0.5 and not row1["direction_right"]
    assert row1["targeted_effect"] == 3.0 and row1["random_effect"] == 1.0 and row1["ratio"] == 3.0
    assert row1["lds"] == pytest.approx(0.5)  # Δ 1, 3, 2
    assert out["sign_agreement"] == 0.75 and out["rows_direction_right"] == 0.5
    assert out["targeted_effect"] == pytest.approx(11 / 4) and out["random_effect"] == 0.75
    assert out["ratio"] == pytest.approx(11 / 3)
    predicted = [-1.0, 2.0, 0.1, -4.0, 3.0, -0.2]
    actual = [-2.0, 3.0, 0.5, 2.0, 4.0, -1.0]
    from scipy.stats import spearmanr

    assert out["spearman"] == pytest.approx(spearmanr(predicted, actual).statistic)
    # ranks 2 5 4 1 6 3 against 1 5 3 4 6 2: Σd² = 12
    assert out["spearman"] == pytest.approx(1 - 6 * 12 / (6 * 35))
    assert out["lds"] == pytest.approx(0.75) and out["lds_subsets"] == 3 and out["seconds"] == 10.0
    del results["warm-lds-2"]
    assert aggregate({"jobs": jobs}, results, 2)["warm"] == {"missing_jobs": ["warm-lds-2"]}


# ----------------------------------------------------------------------------- end to end

QUERY = "good movie"


def _dataset(rows):
    return datasets.Dataset.from_list(rows).cast_column("label", datasets.ClassLabel(names=NAMES))


def _classifier_only(model):
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("classifier."))
    return model


TRAIN = dict(epochs=20, learning_rate=0.05, batch_size=8, seed=0, show_progress=False)


@pytest.fixture(scope="module")
def tiny_run(tok, tmp_path_factory):
    """A trained tiny BERT (classifier only), its training set (the query text 12 x gold, 4 x
    other label, and 24 other sentences) and an explanation run of two queries."""
    others = ["bad film", "awful plot", "great story", "nice actor", "boring scene", "fine music"]
    rows = [{"text": QUERY, "label": 1}] * 12 + [{"text": QUERY, "label": 0}] * 4
    rows += [{"text": f"{others[i % 6]} {w}", "label": int(i % 6 >= 2)} for i, w in
             enumerate(["today", "again", "here", "there"] * 6)]
    train = _dataset(rows)
    queries = _dataset([{"text": QUERY, "label": 1}, {"text": "bad film today", "label": 0}])
    model = _classifier_only(tiny_bert(seed=0))
    model = train_classifier(model, tok, train, **TRAIN)
    out = tmp_path_factory.mktemp("run")
    args = ExplainArguments(queries="all", params="classifier", top_k=3, max_length=16,
                            solver=SolverOptions(solver="exact"))
    explain_dataset(model, tok, train, queries, args, out)
    return model, train, out


def _args(**kwargs):
    defaults = dict(k=4, measurement="loss", protocol="both", init_model="unused: a module is passed",
                    retrain_params="explained", epochs=10, learning_rate=0.1, warm_epochs=5, warm_learning_rate=0.04,
                    batch_size=8, lds_subsets=3, lds_fraction=0.6)
    return VerifyArguments(**{**defaults, **kwargs})


def test_top_k_removal_moves_the_loss_as_predicted_and_resume_skips_jobs(tiny_run, tok, monkeypatch):
    model, train, run_dir = tiny_run
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    report = verify_run(run_dir, _args(), model=model, tokenizer=tok, train=train,
                        init_model=_classifier_only(tiny_bert(seed=0)))
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())  # the model is untouched
    plan = json.loads((run_dir / "verify" / "plan.json").read_text())
    assert len(plan["jobs"]) == 2 * (1 + 2 * 3 + 3) and plan["k"] == 4 and plan["n"] == 40
    # Row 0 is the query "good movie": its largest influences on the loss are the 4 copies with the
    # other label (removing them lowers the loss), its smallest are examples of the gold label.
    jobs = {job["id"]: job for job in plan["jobs"]}
    assert jobs["warm-top-r0-0"]["remove"] == [12, 13, 14, 15]
    assert {train[i]["label"] for i in jobs["warm-bottom-r0-0"]["remove"]} == {1}
    for protocol in ("initial", "warm"):
        numbers = report["protocols"][protocol]
        row = {pair["kind"]: pair for pair in numbers["rows"][0]["pairs"]}
        assert row["top"]["predicted"] < 0 and row["top"]["actual"] < 0, (protocol, row)
        assert row["bottom"]["predicted"] > 0 and row["bottom"]["actual"] > 0, (protocol, row)
        summary = {key: numbers[key] for key in ("sign_agreement", "spearman", "ratio", "lds")}
        print(protocol, summary)
        assert numbers["sign_agreement"] == 1.0 and numbers["spearman"] >= 0.6 and numbers["lds"] >= 0.6, summary
    saved = json.loads((run_dir / "verify" / "report.json").read_text())
    assert saved["protocols"]["warm"]["sign_agreement"] == report["protocols"]["warm"]["sign_agreement"]
    html = (run_dir / "verify" / "report.html").read_text()
    assert "<svg" in html and "Protocol: initial" in html and "<script" not in html

    # Resume: nothing reruns; a deleted job file reruns that job alone; new options are refused.
    calls = []
    real = verify.run_job
    monkeypatch.setattr(verify, "run_job", lambda job, context: calls.append(job["id"]) or real(job, context))
    again = verify_run(run_dir, _args(max_workers=1), model=model, tokenizer=tok, train=train,
                       init_model=_classifier_only(tiny_bert(seed=0)))
    assert calls == [] and again["protocols"] == report["protocols"]
    (run_dir / "verify" / "jobs" / "warm-top-r1-0.json").unlink()
    verify_run(run_dir, _args(), model=model, tokenizer=tok, train=train, init_model=_classifier_only(tiny_bert(seed=0)))
    assert calls == ["warm-top-r1-0"]
    with pytest.raises(IncompatibleRunError, match="k"):
        verify_run(run_dir, _args(k=3), model=model, tokenizer=tok, train=train)


def test_saliency_rows_are_the_records_measurements(tiny_run, tok, tmp_path):
    """The saliency rows re-measured at the trained weights equal the run's recorded saliency,
    and a training set that is not the run's is refused before any work."""
    model, train, run_dir = tiny_run
    records, _, explain_args = verify.read_run(run_dir)
    rows = verify.measurement_rows(records, "saliency")
    assert len(rows) == 3 and {row.role for row in rows} == {"predicted", "gold"}  # query 1 is misclassified
    values = verify.measure(model, tok, rows, explain_args)
    by_query = {r["query_index"]: r for r in records}
    for row, value in zip(rows, values):
        entry = next(e for e in by_query[row.query_index]["labels"] if e["label"] == row.label)
        assert value == pytest.approx(entry["saliency"][row.word], rel=1e-5, abs=1e-9)
    shuffled = train.shuffle(seed=1)
    with pytest.raises(ValueError, match="not the run's"):
        verify_run(run_dir, _args(measurement="saliency", protocol="warm"), model=model, tokenizer=tok, train=shuffled)


def test_cli_verify_with_a_process_pool_equals_a_job_run_here(tiny_run, tok, tmp_path, capsys):
    """`pairdots explain` then `pairdots verify` (model and data from meta.json) with two worker
    processes; a job rerun in this process gives the pool's measurements bit for bit."""
    from hf_pairdots.cli import main as cli_main

    model, train, _ = tiny_run
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(train["text"], train["label"])))
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert cli_main(["explain", str(model_dir), "--data", str(data), "--split", "train", "--out", str(out),
                     "--max-length", "16", "--top-k", "2", "--max-queries", "1", "--params", "classifier",
                     "--solver", "exact"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit, match="init_model"):
        cli_main(["verify", str(out), "--protocol", "both"])
    flags = ["verify", str(out), "--k", "3", "--warm-epochs", "1", "--warm-learning-rate", "0.02",
             "--batch-size", "8", "--max-rows", "1", "--max-workers", "2", "--retrain-params", "explained"]
    assert cli_main(flags) == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert set(printed) == {"warm"} and set(printed["warm"]) >= {"sign_agreement", "spearman", "ratio"}
    jobs = out / "verify" / "jobs"
    names = ["warm-full.json"] + [f"warm-{kind}-r0-0.json" for kind in ("top", "bottom", "random")]
    assert sorted(p.name for p in jobs.iterdir()) == sorted(names)
    pooled = json.loads((jobs / "warm-top-r0-0.json").read_text())
    (jobs / "warm-top-r0-0.json").unlink()
    assert cli_main(flags[:-4] + ["--max-workers", "1", "--retrain-params", "explained"]) == 0
    assert json.loads((jobs / "warm-top-r0-0.json").read_text())["measurements"] == pooled["measurements"]


def test_job_training_set_removes_and_adds_rows():
    train = _dataset([{"text": f"w{i}", "label": i % 2} for i in range(6)])
    assert verify.job_training_set(train, {"remove": [1, 4], "add": []})["text"] == ["w0", "w2", "w3", "w5"]
    assert verify.job_training_set(train, {"remove": [], "add": [5, 0]})["text"] == [
        "w0", "w1", "w2", "w3", "w4", "w5", "w5", "w0"]
    assert verify.job_training_set(train, {"remove": [], "add": []}) is train


@pytest.mark.parametrize("size", [475, 500, 525, 17, 1])
def test_job_epochs_keep_the_full_jobs_steps(size):
    """32 steps for 1 epoch of 500 examples in batches of 16, whatever the job's set size."""
    epochs = verify.job_epochs(1.0, 500, size, 16)
    assert math.ceil(epochs * math.ceil(size / 16)) == 32
    assert math.ceil(verify.job_epochs(0.25, 500, size, 16) * math.ceil(size / 16)) == 8
