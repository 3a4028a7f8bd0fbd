"""The Trainer-free pipeline (hf_pairdots.pipeline): resuming an output folder, and the one
function that turns explanations into an augmented training set."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "golden"))

from make_golden import sentiment_dataset, sentiment_rows, trained_tiny_bert  # noqa: E402

from hf_pairdots import IncompatibleRunError  # noqa: E402
from hf_pairdots.arguments import ExplainArguments, SolverOptions  # noqa: E402
from hf_pairdots.augment.dataset import apply_edits, collect_edits  # noqa: E402
from hf_pairdots.explain import Explainer  # noqa: E402
from hf_pairdots.pipeline import (  # noqa: E402
    augment_training_set,
    edit_arguments,
    edit_top_k,
    explain_dataset,
    resume_mismatch,
)
from hf_pairdots.records import Explanation  # noqa: E402
from hf_pairdots.report import ExplanationStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tok):
    """The golden run's tiny BERT, trained on 40 rows, and its 6 dev rows."""
    torch.manual_seed(0)
    train, dev = sentiment_dataset(sentiment_rows(0, 40)), sentiment_dataset(sentiment_rows(1, 6))
    return trained_tiny_bert(tok, train), train, dev


ARGS = ExplainArguments(queries="all", max_queries=1, top_k=2, max_length=16, solver=SolverOptions(solver="cg"))


def _lines(folder: Path) -> list[str]:
    return (folder / "explanations.jsonl").read_text(encoding="utf-8").splitlines()


def test_resume_with_the_same_options_appends(setup, tok, tmp_path, monkeypatch):
    model, train, dev = setup
    first = explain_dataset(model, tok, train, dev, ARGS, tmp_path)
    assert first["queries"] == 1 and len(_lines(tmp_path)) == 1
    kept = _lines(tmp_path)[0]
    more = explain_dataset(model, tok, train, dev, dataclasses.replace(ARGS, max_queries=3), tmp_path)
    lines = _lines(tmp_path)
    assert more["queries"] == 3 and len(lines) == 3 and lines[0] == kept  # appended, the first untouched
    assert [json.loads(line)["query_index"] for line in lines] == [0, 1, 2]

    def fail(*args, **kwargs):
        raise AssertionError("a finished query was explained again")

    monkeypatch.setattr(Explainer, "explain", fail)
    again = explain_dataset(model, tok, train, dev, dataclasses.replace(ARGS, max_queries=3), tmp_path)
    assert again["queries"] == 3 and _lines(tmp_path) == lines


def test_resume_with_other_options_refuses_before_any_model_work(setup, tok, tmp_path):
    model, train, dev = setup
    explain_dataset(model, tok, train, dev, ARGS, tmp_path)
    saved = (tmp_path / "explain_args.json").read_bytes()
    other = dataclasses.replace(ARGS, top_k=3, solver=SolverOptions(solver="cg", cg_tol=1e-4))
    assert resume_mismatch(tmp_path, other) == {"solver.cg_tol": (1e-3, 1e-4), "top_k": (2, 3)}
    # model=None: any model work would fail with another error; the check comes first
    with pytest.raises(IncompatibleRunError, match=r"solver\.cg_tol: saved 0\.001, now 0\.0001; top_k: saved 2, now 3"):
        explain_dataset(None, tok, train, dev, other, tmp_path)
    assert (tmp_path / "explain_args.json").read_bytes() == saved and len(_lines(tmp_path)) == 1
    # options that do not change a record may differ
    free = dataclasses.replace(ARGS, max_queries=None, suspicious=0, output_subdir="elsewhere")
    assert resume_mismatch(tmp_path, free) == {}
    # a folder without explanations is no run to mix with
    (tmp_path / "explanations.jsonl").write_text("")
    assert resume_mismatch(tmp_path, other) == {}


def test_edit_arguments_one_top_k_rule():
    assert edit_top_k("attack_combined", 2) == 7 and edit_top_k("fix", 2) == 4
    args = edit_arguments("fix", 2, ARGS)
    assert (args.edit, args.labels, args.top_k, args.max_length) == ("fix", ["gold", "predicted"], 4, 16)
    assert edit_arguments("attack_down", 1, top_k=9).top_k == 9
    with pytest.raises(ValueError, match="per_query=0"):
        edit_arguments("fix", 0)
    with pytest.raises(ValueError, match="objective"):
        edit_arguments("fix_everything", 1)


def test_augmented_set_equals_the_old_code_path(setup, tok, tmp_path):
    """explain with edits, collect, apply, as ``pairdots augment`` and the recipes did it by hand."""
    model, train, dev = setup
    base = ExplainArguments(queries="all", max_length=16, solver=SolverOptions(solver="cg"))
    old_args = dataclasses.replace(base, edit="fix", labels=("gold", "predicted"), top_k=2 + 2)
    explain_dataset(model, tok, train, dev, old_args, tmp_path / "old")
    records = sorted(ExplanationStore(tmp_path / "old").records(), key=lambda r: r["query_index"])
    old_edits = collect_edits(records, train, "fix", per_query=2, seed=0)
    old_augmented = apply_edits(train, old_edits.dataset)

    made = augment_training_set(model, tok, train, dev, tmp_path / "new", objective="fix", per_query=2, args=base)
    assert made.args == old_args
    assert [r.to_dict() for r in made.explanations] == records
    assert all(isinstance(r, Explanation) for r in made.explanations)
    assert made.edits.dataset.to_list() == old_edits.dataset.to_list() and len(made.edits.dataset) >= 6
    assert made.edits.shortfalls == old_edits.shortfalls
    assert made.dataset.to_list() == old_augmented.to_list()
    assert len(made.dataset) == len(train) + len(made.edits.dataset)  # fixing adds rows
    assert made.summary["queries"] == 6
