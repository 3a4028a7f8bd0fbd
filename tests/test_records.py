"""Typed explanation records (hf_pairdots.records) and the typed solver result (ihvp.IHVPResult).

The records must write today's JSON exactly: a record of the golden run and the lines of an
``explanations.jsonl`` written before the typed records existed (``tests/data/explanations_v0.jsonl``,
made by the previous commit's ``ExplanationStore``: LiSSA with repeats and fixing edits, an
unlabelled query, CG with truncated words) come back bit for bit, key order included.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from hf_pairdots import ihvp
from hf_pairdots.arguments import SolverOptions
from hf_pairdots.loss import full_hvp, make_train_loss, prepare_data
from hf_pairdots.measurement import loss_measurement_gradient
from hf_pairdots.models import tiny_bert
from hf_pairdots.records import (
    Explanation,
    LabelExplanation,
    ProposedEdit,
    SolveDiagnostics,
    TrainAttribution,
    as_explanation,
    check_finite,
)
from hf_pairdots.report import ExplanationStore, render_html
from hf_pairdots.solve import compute_s_test

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "run.json"
OLD_JSONL = HERE / "data" / "explanations_v0.jsonl"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json_line(record: dict) -> str:
    """A line as ExplanationStore writes it."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def _old_lines() -> list[str]:
    return [line for line in OLD_JSONL.read_text(encoding="utf-8").split("\n") if line]


@pytest.mark.parametrize("index", range(6))
def test_golden_record_round_trips_bit_for_bit(index):
    stored = json.loads(GOLDEN.read_text())["records"][index]
    record = Explanation.from_dict(stored)
    assert record.to_dict() == stored
    # same floats, same bytes (the golden file sorts its keys; the order is checked on the old jsonl)
    assert json.dumps(record.to_dict(), sort_keys=True) == json.dumps(stored, sort_keys=True)
    # typed all the way down
    assert isinstance(record.diagnostics, SolveDiagnostics) and record.diagnostics.solver == "cg"
    entry = record.labels[0]
    assert isinstance(entry, LabelExplanation) and isinstance(entry.top_train[0], TrainAttribution)
    assert isinstance(entry.top_train[0].edit, ProposedEdit) and entry.top_train[0].edit.found


def test_golden_record_fields_hold_the_json_values():
    """Hand-checked against tests/golden/run.json: query 0 of the golden run."""
    record = Explanation.from_dict(json.loads(GOLDEN.read_text())["records"][0])
    assert (record.query_index, record.text, record.gold, record.predicted) == (0, "was movie actor poor the", 0, 0)
    gold = record.label("gold")
    assert gold is record.labels[0] and record.label("predicted") is None  # a correct prediction: one row
    # occlusion: erasing "poor", the sentence's one sentiment word, drops P(neg) by 0.97; the rest ~0
    assert gold.salient_word == 3 and record.words[gold.salient_word] == "poor"
    assert gold.saliency[3] == pytest.approx(0.9731, abs=1e-3) and max(abs(s) for s in gold.saliency[:3]) < 1e-4
    top = gold.top_train[0]  # a negative training sentence whose responsible word is its sentiment word
    assert (top.train_index, top.responsible_word, top.words[top.responsible_word]) == (0, 3, "dull")
    assert top.influence == pytest.approx(0.026037, rel=1e-2)  # the golden file's CPU, to another's rounding
    assert (top.edit.objective, top.edit.original, top.edit.replacement, top.edit.position) == (
        "fix_up", "dull", "benumb", 3)
    assert record.diagnostics.solve == {"damping": pytest.approx(0.036141, rel=1e-3), "iterations": [7], "solver": "cg"}
    assert record.diagnostics.cached == [False] and record.diagnostics.topk_overlap is None


def test_old_jsonl_lines_load_and_write_back_byte_for_byte():
    lines = _old_lines()
    assert len(lines) == 3
    for line in lines:
        assert _json_line(Explanation.from_dict(json.loads(line)).to_dict()) == line  # key order too


def test_old_jsonl_loads_through_the_store(tmp_path):
    (tmp_path / "explanations.jsonl").write_text(OLD_JSONL.read_text(encoding="utf-8"), encoding="utf-8")
    store = ExplanationStore(tmp_path)
    lissa, unlabelled, cg = store.explanations()
    assert [r.query_index for r in (lissa, unlabelled, cg)] == [0, 1, 2]
    d = lissa.diagnostics
    assert d.solver == "lissa" and d.solve["repeat"] == 2 and d.solve["depth"] == 40
    assert len(d.repeat_relative_spread) == len(d.topk_overlap) == len(d.relative_residual) == len(lissa.labels)
    assert 0.0 <= d.topk_overlap[0] <= 1.0
    top = lissa.labels[0].top_train
    assert top[0].edit is not None and top[1].edit is None  # edit_top_k=1: only the first has an edit
    assert "edit" not in top[1].to_dict()
    assert unlabelled.gold is None and unlabelled.gold_name is None
    assert [entry.role for entry in unlabelled.labels] == ["predicted"]
    assert cg.truncated_words == 7 and cg.diagnostics.solve["iterations"] == [7]
    assert cg.diagnostics.repeat_relative_spread is None and "topk_overlap" not in cg.diagnostics.to_dict()
    # a typed record appended and read back is the same JSON line
    store.append(cg)
    assert _json_line(ExplanationStore(tmp_path).records()[-1]) == _old_lines()[2]
    assert render_html(store.explanations(), {}) == render_html(store.records(), {})  # typed and dicts alike


def test_missing_field_names_it():
    record = json.loads(_old_lines()[0])
    del record["labels"][0]["salient_word"]
    with pytest.raises(ValueError, match="salient_word"):
        Explanation.from_dict(record)
    assert as_explanation(Explanation.from_dict(json.loads(_old_lines()[1]))).query_index == 1


def test_edit_without_substitute_keeps_its_reason():
    edit = ProposedEdit.from_dict({"objective": "fix_down", "reason": "no substitute lowers the influence"})
    assert not edit.found
    assert edit.to_dict() == {"objective": "fix_down", "reason": "no substitute lowers the influence"}


def test_check_finite_names_the_field():
    record = Explanation.from_dict(json.loads(_old_lines()[2]))
    record.labels[0].top_train[1].word_influence[3] = math.nan
    with pytest.raises(ValueError, match=r"record\.labels\[0\]\.top_train\[1\]\.word_influence\[3\] is nan"):
        record.check_finite()
    check_finite({"a": [1.0, None, "x"]})  # finite floats, None and strings pass


# --------------------------------------------------------------------------- the typed solver result

def _ridge(q=3, p=6, n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    return x.T @ x / n, torch.randn(q, p, generator=gen, dtype=torch.float64)


def test_lissa_result_has_per_row_fields_and_scalar_diagnostics():
    h, v = _ridge()
    result = ihvp.lissa(lambda u, step: u @ h, v, damping=0.1, scale=8.0, depth=300, repeat=3, keep_repeats=True)
    assert result.repeats.shape == (3, 3, 6)
    assert len(result.repeat_relative_spread) == 3 and max(result.repeat_relative_spread) < 1e-12  # same HVP
    assert len(result.norm_trace) == 3 * 30  # every 10th of 300 steps, 3 repeats
    assert result.relative_residual is None  # a bare solver does not measure it
    assert result.diagnostics == {"solver": "lissa", "damping": 0.1, "scale": 8.0, "depth": 300, "repeat": 3}
    exact = torch.linalg.solve(h + 0.1 * torch.eye(6, dtype=torch.float64), v.T).T
    assert torch.allclose(result.x, exact, rtol=1e-4, atol=1e-6)


def test_compute_s_test_reports_each_rows_residual(tok):
    """relative_residual[q] = ||(H + λI) x_q - v_q|| / ||v_q||, checked with the explicit Hessian."""
    model = tiny_bert(seed=0).eval()
    objective = make_train_loss(model, "classifier")
    texts = ["a good film", "a bad film", "the plot was dull", "a great story", "sad actor", "nice scene"]
    labels = [1, 0, 0, 1, 0, 1]
    data = prepare_data(objective, tok, texts, labels, batch_size=4)
    v = loss_measurement_gradient(objective, data.batches[0])[:3]
    result = compute_s_test(objective, data, v, SolverOptions(solver="cg", damping=0.05, cg_tol=1e-2, cg_max_iter=3))
    assert isinstance(result.relative_residual, list) and len(result.relative_residual) == 3
    json.dumps(result.diagnostics)  # solve-level values only: no tensor, nothing per row
    assert "relative_residual" not in result.diagnostics and result.diagnostics["solver"] == "cg"
    h = ihvp.explicit_hessian(full_hvp(objective, data), objective.params.numel)
    r = result.x @ h + 0.05 * result.x - v
    expected = (r.norm(dim=1) / v.norm(dim=1)).tolist()
    assert result.relative_residual == pytest.approx(expected, rel=1e-3)
    assert max(expected) > 1e-6  # three CG steps leave a residual to measure
