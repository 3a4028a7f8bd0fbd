"""Ranking of training examples (:func:`hf_pairdots.influence.rank_scores`, ``ExplainArguments.ranking``).

References: norms of per-example gradients taken one example at a time, and a top-k by
I(z, m) / ||∇θ L(z)|| computed by hand from the full raw score row.
"""

import pytest
import torch

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.influence import gradient_norms, rank_scores
from hf_pairdots.loss import make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["a good movie", "bad film", "the acting was great and the plot was fun", "boring", "i hated it",
         "fine , i guess", "really awful mess", "wonderful", "a fun and good plot", "terrible film"]
LABELS = [1, 0, 1, 0, 0, 1, 0, 1, 1, 0]


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(hidden_size=16, intermediate_size=32, initializer_range=0.3, seed=5)


def hand_norms(objective, data) -> torch.Tensor:
    out = torch.empty(data.size)
    for batch in data.batches:
        for j, index in enumerate(batch["index"].tolist()):
            g = torch.func.grad(lambda t: objective.per_example_loss(t, batch)[j])(objective.theta)
            out[index] = g.norm()
    return out


@pytest.mark.parametrize("params", ["head", "classifier"])
def test_gradient_norms_equal_one_example_at_a_time(bert, tok, params):
    objective = make_train_loss(bert, params)
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4, max_length=16)
    expected = hand_norms(objective, data)
    assert torch.allclose(gradient_norms(objective, data, rows_per_call=3), expected, rtol=1e-5)


def test_rank_scores_values_and_errors():
    scores = torch.tensor([[2.0, -1.0, 3.0, 0.5], [1.0, 1.0, 1.0, 0.0]])
    norms = torch.tensor([4.0, 0.5, 1.0, 0.0])
    assert torch.equal(rank_scores(scores, "raw"), scores)
    expected = torch.tensor([[0.5, -2.0, 3.0, 0.0], [0.25, 2.0, 1.0, 0.0]])
    assert torch.equal(rank_scores(scores, "unit", norms), expected)
    with pytest.raises(ValueError, match="ranking"):
        rank_scores(scores, "relative")
    with pytest.raises(ValueError, match="norms"):
        rank_scores(scores, "unit")
    with pytest.raises(ValueError, match="norms"):
        rank_scores(scores, "unit", norms[:3])
    with pytest.raises(ValueError, match="ranking"):
        ExplainArguments(ranking="relative")


def test_unit_ranking_top_k_equals_hand_computation(bert, tok):
    """The unit ranking's top-3 = the 3 largest I(z_i, m) / ||∇θ L(z_i)|| over all training
    examples, with I from a raw-ranked run that lists every example (top_k = n), and the norms
    by hand; records keep the raw I. The unit top-3 differs from the raw one here."""
    solver = SolverOptions(solver="exact", damping=1.0)
    queries = [Query(0, "a good and fun film", 1), Query(1, "the plot was awful", 0)]
    full = Explainer(bert, tok, TEXTS, LABELS, ExplainArguments(top_k=len(TEXTS), max_length=16, solver=solver,
                                                                queries="all", labels=("gold",), ranking="raw"))
    unit = Explainer(bert, tok, TEXTS, LABELS, ExplainArguments(top_k=3, max_length=16, solver=solver, queries="all",
                                                                labels=("gold",), ranking="unit"))
    norms = hand_norms(full.objective, full.data)
    assert torch.allclose(unit.train_gradient_norms, norms, rtol=1e-5)
    assert full.train_gradient_norms is None  # the raw ranking needs no gradient pass
    differs = False
    for raw_rec, unit_rec in zip(full.explain(queries), unit.explain(queries)):
        raw_top = raw_rec.labels[0].top_train
        scores = torch.empty(len(TEXTS))
        for entry in raw_top:
            scores[entry.train_index] = entry.influence
        expected = torch.topk(scores / norms, 3).indices.tolist()
        got = unit_rec.labels[0].top_train
        assert [e.train_index for e in got] == expected
        assert [e.influence for e in got] == pytest.approx([float(scores[i]) for i in expected], rel=1e-4)
        differs |= expected != [e.train_index for e in raw_top[:3]]
    assert differs
