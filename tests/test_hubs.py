"""Hubs (:mod:`hf_pairdots.hubs`): one training example in many top-k lists, flagged with its
training-gradient norm (case C37 of ../shared/cases/README.md).

References: counts by hand; gradient norms by autograd on the model's own loss, one example at a
time; a training set with two contradicting duplicate pairs (the same sentence with both labels),
whose gradients are hundreds of times the others' at the fitted head.
"""

import json
import statistics

import datasets
import pytest
import torch

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.hubs import Hub, find_hub
from hf_pairdots.models import tiny_bert
from hf_pairdots.pipeline import explain_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POS = ["a good movie", "the acting was great", "wonderful and fun", "a fun plot", "i loved it", "great film",
       "really good", "a wonderful story", "fun and good", "the plot was great"]
NEG = ["bad film", "boring", "i hated it", "really awful mess", "terrible film", "an awful plot", "bad acting",
       "a boring story", "hated the plot", "awful and bad"]
TEXTS = POS + NEG + ["great film", "terrible film"]  # rows 20, 21 contradict rows 5 and 14
LABELS = [1] * 10 + [0] * 10 + [0, 1]
CONTRADICTED = {5, 14, 20, 21}
DEV = ["a great plot", "good fun", "an awful film", "boring and bad", "i loved the story", "the acting was bad",
       "a wonderful film", "terrible acting", "really fun", "hated it"]
DEV_LABELS = [1, 1, 0, 0, 1, 0, 1, 0, 1, 0]
HEAD = ("bert.pooler", "classifier")


def test_find_hub_by_hand():
    lists = [[1, 2, 3], [1, 4, 5], [6, 1, 7], [8, 9, 2], [2, 4, 6], [3, 5, 7], [8, 4, 9], [5, 6, 7], [3, 8, 9],
             [4, 6, 7]]  # 4, 6 and 7 in 4 lists each, then 1..9 fewer
    assert find_hub(lists) == Hub(4, 4, 10)  # the smallest index among the tied
    assert find_hub(lists, share=0.4) is None  # 4 / 10 is not above 0.4
    assert find_hub(lists[:9]) is None  # fewer than HUB_MIN_ROWS lists
    assert find_hub([[1, 1, 2]] * 10) == Hub(1, 10, 10)  # once per list
    with pytest.raises(ValueError, match="share"):
        find_hub(lists, share=1.0)


def test_hub_message_and_norms():
    hub = Hub(7, 3, 12).with_norms({7: 6.0, 1: 1.0, 2: 2.0, 3: 3.0})
    assert hub.share == 0.25 and hub.gradient_norm == 6.0 and hub.median_gradient_norm == 2.5
    assert hub.message("raw") == ("training row 7 is in the top-k of 3 of 12 explained rows (25%); its training-"
                                  "gradient norm is 6, 2.4x the median 2.5 of the listed examples; raw influence "
                                  "favours examples with large gradients (hard or mislabelled ones): check the "
                                  "row, or rank with ExplainArguments(ranking='unit').")
    assert "ranking='unit'" not in hub.message("unit") and hub.to_dict("raw")["share"] == 0.25


@pytest.fixture(scope="module")
def fitted(tok):
    """A tiny BERT whose pooler and classifier are fitted (400 Adam steps) to TEXTS."""
    model = tiny_bert(hidden_size=16, intermediate_size=32, initializer_range=0.3, seed=5)
    inputs = tok(TEXTS, padding=True, return_tensors="pt")
    head = [p for n, p in model.named_parameters() if n.startswith(HEAD)]
    optimizer = torch.optim.Adam(head, lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(**inputs).logits, torch.tensor(LABELS)).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model


def hand_norm(model, tok, row: int) -> float:
    head = [p for n, p in model.named_parameters() if n.startswith(HEAD)]
    loss = torch.nn.functional.cross_entropy(model(**tok([TEXTS[row]], return_tensors="pt")).logits,
                                             torch.tensor([LABELS[row]]))
    return float(torch.cat([g.flatten() for g in torch.autograd.grad(loss, head)]).norm())


def explain(model, tok, tmp_path, ranking):
    args = ExplainArguments(top_k=3, max_length=16, queries="all", labels=("gold",), ranking=ranking,
                            solver=SolverOptions(solver="exact"))
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    dev = datasets.Dataset.from_dict({"text": DEV, "label": DEV_LABELS})
    out = tmp_path / ranking
    explain_dataset(model, tok, train, dev, args, out)
    lists = [[t["train_index"] for t in entry["top_train"]]
             for line in (out / "explanations.jsonl").read_text().splitlines() for entry in json.loads(line)["labels"]]
    return json.loads((out / "meta.json").read_text()).get("hub"), lists, (out / "report.html").read_text()


def test_c37_high_norm_rows_are_flagged_with_their_gradient_norm(fitted, tok, tmp_path):
    """C37: the contradicted rows' gradients are > 100x the median; under raw influence they fill
    most top-3 slots, one of them is flagged in meta.json and the report with its norm (= autograd's)
    and the remedy; ranked by unit-normalised gradients, they leave the lists."""
    hub, lists, report = explain(fitted, tok, tmp_path, "raw")
    count = sum(hub["train_index"] in top for top in lists)
    assert hub["train_index"] in CONTRADICTED and hub["count"] == count and hub["rows"] == len(lists) == 10
    assert hub["share"] > 0.1 and sum(i in CONTRADICTED for top in lists for i in top) > 1.5 * len(lists)  # most of the 3 x 10 slots
    assert hub["gradient_norm"] == pytest.approx(hand_norm(fitted, tok, hub["train_index"]), rel=1e-4)
    norms = [hand_norm(fitted, tok, i) for i in sorted({i for top in lists for i in top})]
    assert hub["median_gradient_norm"] == pytest.approx(statistics.median(norms), rel=1e-4)
    assert hub["gradient_norm"] > 100 * hub["median_gradient_norm"]
    assert "Hub:" in report and "ranking=&#39;unit&#39;" in report
    _, unit_lists, _ = explain(fitted, tok, tmp_path, "unit")
    assert sum(i in CONTRADICTED for top in unit_lists for i in top) < sum(i in CONTRADICTED for top in lists for i in top)


def test_no_hub_no_entry(fitted, tok, tmp_path):
    """Fewer than HUB_MIN_ROWS explained rows: no ``hub`` entry, no warning in the report."""
    args = ExplainArguments(top_k=3, max_length=16, queries="all", labels=("gold",), solver=SolverOptions(solver="exact"))
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    dev = datasets.Dataset.from_dict({"text": DEV[:4], "label": DEV_LABELS[:4]})
    explain_dataset(fitted, tok, train, dev, args, tmp_path)
    assert "hub" not in json.loads((tmp_path / "meta.json").read_text())
    assert "Hub:" not in (tmp_path / "report.html").read_text()


def test_gradient_norms_of_scored_rows_only(fitted, tok):
    """``Explainer.gradient_norms_of``: autograd's norm for a scored row; a skipped (blank) row
    or one past the training set is refused before any pass."""
    from hf_pairdots.explain import Explainer

    args = ExplainArguments(top_k=3, max_length=16, solver=SolverOptions(solver="exact"))
    explainer = Explainer(fitted, tok, TEXTS + ["   "], LABELS + [0], args)
    assert explainer.gradient_norms_of([21, 5]) == pytest.approx({5: hand_norm(fitted, tok, 5),
                                                                   21: hand_norm(fitted, tok, 21)}, rel=1e-4)
    for row in (22, 23):
        with pytest.raises(ValueError, match="not scored"):
            explainer.gradient_norms_of([row])
