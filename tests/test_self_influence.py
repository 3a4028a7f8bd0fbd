"""Self-influence (:func:`hf_pairdots.influence.self_influence`), the tail-disagreement statistic
against a loss-influence ranking, and the suspicious training examples of the pipeline
(``ExplainArguments.suspicious``, ``suspicious.json``, the report section, ``--suspicious``).

References: a float64 closed form (explicit Hessian by autograd, torch.linalg.solve), a convex
toy whose label-flipped points must come first, hand-counted tails and a Monte Carlo check of
the statistic's null variance.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_pairdots import pipeline as pipeline_module
from hf_pairdots import influence
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import ParameterSet, select_parameters
from hf_pairdots.callback import SUSPICIOUS_NAME, explain_dataset, find_suspicious
from hf_pairdots.cli import main as cli_main
from hf_pairdots.influence import mean_loss_gradient, self_influence, tail_disagreement, train_influence
from hf_pairdots.loss import FullModelLoss, PreparedData, TrainLoss, make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert
from hf_pairdots.report import REPORT_NAME, render_html
from hf_pairdots.solve import compute_s_test

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from make_golden import sentiment_dataset, sentiment_rows, trained_tiny_bert  # noqa: E402  (the golden run's data)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
TEXTS = ["a good movie", "bad film", "the acting was great and the plot was fun", "boring", "i hated every minute",
         "fine , i guess", "ok", "so so film", "a waste of time", "loved it"]
LABELS = [1, 0, 1, 0, 0, 1, 1, 0, 0, 1]


@pytest.fixture(scope="module")
def bert():
    """Untrained tiny BERT (2 layers, hidden 32), float32, eval mode."""
    return tiny_bert(initializer_range=0.1, seed=1)


def closed_form(objective, data, damping: float) -> torch.Tensor:
    """gᵢᵀ (H + λI)⁻¹ gᵢ in float64 from the explicit Hessian of the mean loss and the per-example
    gradients, both by torch.autograd.functional (no code of the library's solvers)."""
    theta = objective.theta.detach()
    order = torch.cat([b["index"] for b in data.batches])

    def losses(th):
        return torch.cat([objective.per_example_loss(th, b) for b in data.batches])

    grads = torch.empty(data.size, theta.numel(), dtype=F64)
    grads[order] = torch.autograd.functional.jacobian(losses, theta, vectorize=True).double()
    hessian = torch.autograd.functional.hessian(lambda th: losses(th).mean(), theta, vectorize=True).double()
    system = hessian + damping * torch.eye(theta.numel(), dtype=F64)
    return (grads * torch.linalg.solve(system, grads.T).T).sum(1)


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------
# self_influence against the closed form
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", ["classifier", "head"])
@pytest.mark.parametrize("solver", ["auto", "cg"])
def test_self_influence_equals_the_closed_form(bert, tok, params, solver):
    """Automatic damping (the head of an untrained model is indefinite), resolved once; "auto"
    is the exact solver for both small θ_S (P = 66 and 1,122); CG to 1e-8 agrees as well."""
    objective = make_train_loss(bert, params)
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4, max_length=32)
    result = self_influence(objective, data, SolverOptions(solver=solver, cg_tol=1e-8))
    assert result.scores.shape == (len(TEXTS),) and result.scores.device.type == "cpu"
    assert result.diagnostics["solver"] == ("exact" if solver == "auto" else "cg")
    assert result.diagnostics["max_relative_residual"] < 1e-5
    reference = closed_form(objective, data, result.diagnostics["damping"])
    assert rel(result.scores, reference) < 1e-5
    assert (result.scores > 0).all()


def test_self_influence_blocks_span_batches_and_the_full_model_route_agrees(bert, tok, monkeypatch):
    """Blocks of 3 rows over batches of 4 (rows of two batches merged into one solve) give the
    same scores as one block, and so does scoring a few rows only; the non-vectorised full-model
    objective gives them too."""
    objective = make_train_loss(bert, "classifier")
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4, max_length=32)
    options = SolverOptions(damping=0.05)
    whole = self_influence(objective, data, options)
    monkeypatch.setattr(influence, "BLOCK_FLOATS", 3 * objective.params.numel)
    blocks = self_influence(objective, data, options)
    assert blocks.diagnostics["block_rows"] == 3
    assert torch.allclose(blocks.scores, whole.scores, rtol=1e-5)
    assert rel(whole.scores, closed_form(objective, data, 0.05)) < 1e-5
    some = [7, 2, 5]  # rows=: only these are scored, in this order, against the same Hessian
    assert torch.allclose(self_influence(objective, data, options, rows=some).scores, whole.scores[some], rtol=1e-5)
    monkeypatch.undo()
    few = (TEXTS[:5], LABELS[:5])
    cached = self_influence(objective, prepare_data(objective, tok, *few, batch_size=2, max_length=32), options)
    full = FullModelLoss(bert, select_parameters(bert, "classifier"))
    by_model = self_influence(full, prepare_data(full, tok, *few, batch_size=2, max_length=32), options)
    assert torch.allclose(by_model.scores, cached.scores, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# A convex toy: label-flipped points are the most self-influential
# --------------------------------------------------------------------------------------------

ALPHA = 0.05


class Logistic(TrainLoss):
    """softplus(z) - y z + α/2 ||w||², z = w·x + b, over a float64 θ = (w, b); batches hold "x"."""

    vectorized = True

    def __init__(self, theta):
        param = nn.Parameter(theta.detach().clone())
        self.model = None
        self.params = ParameterSet(("theta",), (param.shape,), (param,))
        self.theta = theta.detach().clone()

    def prepare(self, batch):
        return batch

    def per_example_loss(self, theta, batch):
        z = batch["x"] @ theta[:-1] + theta[-1]
        return F.softplus(z) - batch["labels"].to(theta.dtype) * z + 0.5 * ALPHA * (theta[:-1] ** 2).sum()


def _blobs(n, gen):
    y = torch.arange(n) % 2
    return torch.randn(n, 2, generator=gen, dtype=F64) + 2.0 * (2 * y[:, None] - 1), y


def _fit(x, y):
    theta = torch.zeros(3, dtype=F64, requires_grad=True)
    batch = {"x": x, "labels": y}
    opt = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = Logistic(theta).per_example_loss(theta, batch).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


@pytest.fixture(scope="module")
def flipped_toy():
    """80 points of two Gaussian blobs (means ±(2, 2)); the 4 points of each blob farthest on its
    side (not near the boundary, where a flip is ambiguous) get the other blob's label; L2
    logistic regression fitted to convergence."""
    gen = torch.Generator().manual_seed(0)
    x, y = _blobs(80, gen)
    margin = x.sum(1) * (2 * y - 1)
    flipped = sorted(torch.cat([torch.where(y == c, margin, -torch.inf).topk(4).indices for c in (0, 1)]).tolist())
    y[flipped] = 1 - y[flipped]
    objective = Logistic(_fit(x, y))
    data = PreparedData([{"x": x[i:i + 16], "labels": y[i:i + 16], "index": torch.arange(i, i + 16)}
                         for i in range(0, 80, 16)], 80)
    return objective, data, x, y, gen, flipped


def test_flipped_labels_have_the_top_self_influence(flipped_toy):
    """The 8 flipped points are the 8 largest self-influences (exact, λ = 0), and self-influence is
    minus the influence of z on its own loss, I(z, L(z)) = -∇L(z)ᵀ H⁻¹ ∇L(z) (Eq. 4)."""
    objective, data, *_, flipped = flipped_toy
    result = self_influence(objective, data, SolverOptions(damping=0.0))
    assert result.diagnostics["solver"] == "exact"
    assert sorted(torch.topk(result.scores, 8).indices.tolist()) == flipped
    assert rel(result.scores, closed_form(objective, data, 0.0)) < 1e-10
    z = flipped[0]
    batch = data.batches[z // 16]
    own = influence.example_gradients(objective, {k: v[z % 16:z % 16 + 1] for k, v in batch.items()})
    s_test = compute_s_test(objective, data, own, SolverOptions(solver="exact", damping=0.0)).x
    assert float(train_influence(objective, data, s_test)[0, z]) == pytest.approx(-float(result.scores[z]), rel=1e-10)


def test_tail_disagreement_on_the_toy(flipped_toy):
    """A clean dev set: the flipped points raise its loss (harmful tail), no disagreement. A dev
    set of copies of the flipped points with their flipped labels: they are its most helpful
    examples, so the most suspicious examples sit in the helpful tail: disagreement (z = √8)."""
    objective, data, x, y, gen, flipped = flipped_toy
    selves = self_influence(objective, data, SolverOptions(damping=0.0)).scores

    def dev_influence(dev):
        v = mean_loss_gradient(objective, PreparedData([dev], len(dev["labels"])))[None]
        return train_influence(objective, data, compute_s_test(objective, data, v, SolverOptions(damping=0.0)).x)[0]

    clean_x, clean_y = _blobs(200, gen)
    clean = tail_disagreement(selves, dev_influence({"x": clean_x, "labels": clean_y}))
    assert clean["in_harmful"] == 1.0 and clean["in_helpful"] == 0.0 and not clean["disagree"]
    copies = tail_disagreement(selves, dev_influence({"x": x[flipped], "labels": y[flipped]}))
    assert copies["in_helpful"] == 1.0 and copies["in_harmful"] == 0.0
    assert copies["z"] == pytest.approx(8 ** 0.5) and copies["disagree"]


# --------------------------------------------------------------------------------------------
# The statistic
# --------------------------------------------------------------------------------------------

def test_tail_disagreement_by_hand():
    """n = 100, k = 10; z = (a - b) / sqrt(a + b) with a, b the members of S (rows 90..99) in the
    helpful and harmful tails."""
    selves = torch.arange(100.0)
    opposite = tail_disagreement(selves, -selves)
    assert opposite == {"fraction": 0.1, "k": 10, "chance": 0.1, "in_helpful": 1.0, "in_harmful": 0.0,
                        "z": pytest.approx(10 ** 0.5), "disagree": True}
    same = tail_disagreement(selves, selves)
    assert same["in_harmful"] == 1.0 and same["z"] == pytest.approx(-10 ** 0.5) and not same["disagree"]
    assert tail_disagreement(selves, selves.roll(45))["z"] == 0.0  # S in the middle: a = b = 0

    def mixed(helpful, harmful):  # `helpful` of S among the 10 smallest, `harmful` among the 10 largest
        scores = torch.zeros(100)
        scores[90:90 + helpful] = -1.0 - torch.arange(helpful)
        scores[90 + helpful:90 + helpful + harmful] = 1.0 + torch.arange(harmful)
        scores[:10 - helpful] = -0.5  # fill the rest of each tail from outside S
        scores[10:20 - harmful] = 0.5
        return tail_disagreement(selves, scores)

    six_one = mixed(6, 1)
    assert (six_one["in_helpful"], six_one["in_harmful"]) == (0.6, 0.1)
    assert six_one["z"] == pytest.approx(5 / 7 ** 0.5) and not six_one["disagree"]  # 1.89
    seven_one = mixed(7, 1)
    assert seven_one["z"] == pytest.approx(6 / 8 ** 0.5) and seven_one["disagree"]  # 2.12


def _z_draws(coupled: bool, draws=3000, n=200):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(draws):
        selves = torch.rand(n, generator=gen)
        if coupled:  # same size, random sign: suspicious rows are in one tail or the other
            influence = selves * torch.randint(0, 2, (n,), generator=gen).mul(2).sub(1)
        else:
            influence = torch.rand(n, generator=gen)
        t = tail_disagreement(selves, influence)
        out.append((t["z"], (t["in_helpful"] + t["in_harmful"]) > 0))
    return torch.tensor(out).T


@pytest.mark.parametrize("coupled", [False, True])
def test_tail_disagreement_is_a_sign_test(coupled):
    """Under the null (the sign of the influence is unrelated to suspicion) z has mean 0 and,
    given a + b > 0, variance 1: for independent rankings (a + b about 4 of k = 20) and for an
    influence as large as the self-influence with a random sign (a + b = 20, where a test against
    independent rankings would have variance 5.6). 3,000 draws, n = 200."""
    z, some = _z_draws(coupled)
    assert abs(float(z.mean())) < 0.06
    assert float((z ** 2).sum() / some.sum()) == pytest.approx(1.0, abs=0.08)
    assert float((z > 2).float().mean()) < 0.04  # false alarms at the threshold


def test_tail_disagreement_rejects_bad_input():
    with pytest.raises(ValueError, match="n >= 2"):
        tail_disagreement(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="n >= 2"):
        tail_disagreement(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="fraction"):
        tail_disagreement(torch.zeros(10), torch.zeros(10), fraction=0.6)


# --------------------------------------------------------------------------------------------
# The pipeline: ExplainArguments.suspicious, suspicious.json, meta, report, CLI
# --------------------------------------------------------------------------------------------

NOISY = [3, 10]  # training rows whose label is flipped


@pytest.fixture(scope="module")
def noisy(tok):
    """40 sentences, one sentiment word each, rows 3 and 10 with the wrong label, and a tiny BERT
    after 30 Adam steps on them (as the golden run's); a clean dev set of 10."""
    rows = sentiment_rows(0, 40)
    for i in NOISY:
        rows[i]["label"] = 1 - rows[i]["label"]
    train = sentiment_dataset(rows)
    return trained_tiny_bert(tok, train), train, sentiment_dataset(sentiment_rows(1, 10))


def test_explain_dataset_lists_the_suspicious_training_examples(noisy, tok, tmp_path):
    model, train, dev = noisy
    args = ExplainArguments(queries="indices", query_indices=[0], top_k=2, max_length=16, suspicious=5)
    explain_dataset(model, tok, train, dev, args, tmp_path)
    listed = json.loads((tmp_path / SUSPICIOUS_NAME).read_text())
    assert [e["rank"] for e in listed] == [1, 2, 3, 4, 5]
    assert sorted(e["train_index"] for e in listed[:2]) == NOISY  # the flipped rows come first
    scores = [e["self_influence"] for e in listed]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    for e in listed:
        assert (e["text"], e["label"]) == (train[e["train_index"]]["text"], train[e["train_index"]]["label"])
        assert e["label_name"] == model.config.id2label[e["label"]]  # the model's names, as in the records
    meta = json.loads((tmp_path / "meta.json").read_text())["suspicious"]
    assert meta["count"] == 5 and meta["params"] == "classifier" and meta["solver"] == "exact"
    assert set(meta["dev_loss"]) == {"fraction", "k", "chance", "in_helpful", "in_harmful", "z", "disagree"}
    assert meta["dev_loss"]["k"] == 4 and "warning" not in meta
    report = (tmp_path / REPORT_NAME).read_text()
    assert "Training examples the model finds suspicious" in report and listed[0]["text"] in report


def test_disagreement_is_a_warning_in_meta_report_and_log(noisy, tok, tmp_path, monkeypatch, caplog):
    """When tail_disagreement says the rankings disagree, meta.json and the report say so."""
    model, train, dev = noisy
    verdict = {"fraction": 0.1, "k": 4, "chance": 0.1, "in_helpful": 0.75, "in_harmful": 0.0, "z": 3.49,
               "disagree": True}
    monkeypatch.setattr(pipeline_module, "tail_disagreement", lambda *a, **k: verdict)
    args = ExplainArguments(queries="indices", query_indices=[0], top_k=2, max_length=16, suspicious=3)
    with caplog.at_level("WARNING", logger="hf_pairdots.callback"):
        explain_dataset(model, tok, train, dev, args, tmp_path)
    warning = json.loads((tmp_path / "meta.json").read_text())["suspicious"]["warning"]
    assert "helpful tail" in warning and "75%" in warning and "z = 3.5" in warning
    assert warning in caplog.text
    assert "Warning:</strong> " + warning.replace("'", "&#39;") in (tmp_path / REPORT_NAME).read_text()


def test_find_suspicious_without_dev_labels_and_with_empty_training_rows(noisy, tok):
    """An unlabelled query split: no dev-loss check, said so. Empty training rows are left out
    and the listed indices stay the dataset's rows."""
    model, train, dev = noisy
    rows = [{"text": "   ", "label": 0}] + train.to_list()
    examples, diagnostics = find_suspicious(model, tok, sentiment_dataset(rows), dev.remove_columns("label"),
                                            ExplainArguments(max_length=16, suspicious=2))
    assert sorted(e["train_index"] for e in examples) == [i + 1 for i in NOISY]
    assert "skipped" in diagnostics["dev_loss"]


def test_report_without_suspicious_is_unchanged():
    meta = {"model": "m", "suspicious": {"count": 1}}
    plain = render_html([], meta)
    assert "finds suspicious" not in plain and "count: 1" in plain  # no list: meta shown as it is
    listed = render_html([], meta, [{"rank": 1, "train_index": 7, "text": "<b>x</b>", "label": 0, "label_name": "neg",
                                     "self_influence": 1.5}])
    assert "finds suspicious" in listed and "&lt;b&gt;x&lt;/b&gt;" in listed and "#7" in listed


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_suspicious_argument_is_checked(value):
    with pytest.raises(ValueError, match="suspicious"):
        ExplainArguments(suspicious=value)
    assert ExplainArguments.from_json(ExplainArguments(suspicious=4).to_json()).suspicious == 4


def test_cli_explain_suspicious(noisy, tok, tmp_path, capsys):
    model, train, dev = noisy
    data = tmp_path / "sst"
    data.mkdir()
    for suffix, ds in (("train", train), ("dev", dev), ("test", dev)):
        lines = "".join(f"{r['label']} {r['text']}\n" for r in ds)
        (data / f"stsa.binary.{suffix}").write_text(lines, encoding="utf-8")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert cli_main(["explain", str(tmp_path / "model"), "--data", str(data), "--out", str(out), "--max-length", "16",
                     "--max-queries", "1", "--queries", "all", "--top-k", "2", "--suspicious", "3"]) == 0
    listed = json.loads((out / SUSPICIOUS_NAME).read_text())
    assert len(listed) == 3 and sorted(e["train_index"] for e in listed[:2]) == NOISY
