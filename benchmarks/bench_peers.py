"""Peer comparison: the same loss-influence job with hf_pairdots and peer libraries.

Setup (once; the peers live in their own venv beside the repo, never in .venv: pyDVL pins
numpy<2 and kronfluence needs --no-deps, see ../shared/PEERS.md):

    bash benchmarks/peers/setup.sh ../peers-venv

Run (from the repo root, in the project's venv; about 5-10 min on 2 cores):

    .venv/bin/python benchmarks/bench_peers.py --peers-python ../peers-venv/bin/python \
        --out benchmarks/RESULTS.md

The job: Koh & Liang's I_up,loss of every training example on the loss of each of Q dev examples,
I(z, z_test) = -∇L(z_test)ᵀ (H + λI)⁻¹ ∇L(z), H the Hessian of the mean cross-entropy over the N
training examples, over the classifier layer of a fine-tuned MiniLM-L6 only (preset
"classifier": weight 2 x 384 + bias 2 = 770 parameters), damping λ fixed for everyone.

Two stages, two interpreters:
1. this script, in the project's venv: fine-tune the packaged MiniLM-L6 on N SST-2 sentences
   (one epoch), cache the features, and run hf_pairdots (exact, CG, LiSSA, low-rank at the same
   λ; LiSSA also with its fully automatic λ) through the public API. It writes JOB.pt with the
   *pooled* features (the classifier's input), labels and the classifier's weights, plus a
   closed-form float64 check of the exact answer.
2. ``benchmarks/peers/run_peers.py`` in the peers' venv: ``nn.Linear(384, 2)`` with those weights
   on those features, the same mean cross-entropy, so every peer sees exactly our loss and
   parameters. It times each peer and returns its raw scores.

Then every answer is brought to our sign and scale by the conversion PEERS.md documents (-1;
captum -N because it builds the Hessian of the summed loss) and compared with our exact answer:
Spearman per query (mean and worst of Q), the least-squares scale, and the relative error.
Feature caching (one encoder forward pass over the data) is timed separately and not included
in anyone's time. The section "(e) peers" of RESULTS.md (between its markers) is replaced; the
rest of the file is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_md import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SST2 = ROOT.parent / "shared" / "data" / "sst_sentence"
PEER_RUNNER = Path(__file__).resolve().parent / "peers" / "run_peers.py"
BEGIN, END = "<!-- bench_peers:begin -->", "<!-- bench_peers:end -->"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Stage 1: the model, the data and our answers
# ---------------------------------------------------------------------------------------------

def pooled(model, features: torch.Tensor, cut: str) -> torch.Tensor:
    """The classifier's input (pooler output) for features cached at ``cut``, captured by a
    pre-hook while the model's own top (:class:`~hf_pairdots.features.TopHead`) maps the features
    to logits (for ``cut="classifier"`` that is the features themselves)."""
    from hf_pairdots.features import TopHead

    captured = {}
    handle = model.classifier.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    try:
        with torch.no_grad():
            TopHead(model, cut)(features)
    finally:
        handle.remove()
    return captured["x"].detach().clone()


def closed_form_influence(x_train, y_train, x_test, y_test, weight, bias, damping):
    """-g_testᵀ (H + λI)⁻¹ g_train in float64 numpy from the softmax-regression formulas.

    θ = (W row-major, b); logits z = W x + b; J_i = ∂z/∂θ (C x P); g_i = J_iᵀ (p_i - e_{y_i});
    H = mean_i J_iᵀ (diag p_i - p_i p_iᵀ) J_i. Independent of autograd and of our solvers.
    """
    def jac(x):
        n, d = x.shape
        c = weight.shape[0]
        j = np.zeros((n, c, c * d + c))
        for k in range(c):
            j[:, k, k * d:(k + 1) * d] = x
            j[:, k, c * d + k] = 1.0
        return j

    def probs_and_grads(x, y):
        z = x @ weight.T + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        j = jac(x)
        r = p.copy()
        r[np.arange(len(y)), y] -= 1.0
        return p, j, np.einsum("ncp,nc->np", j, r)

    p, j, g_train = probs_and_grads(x_train, y_train)
    a = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - np.einsum("nc,nd->ncd", p, p)
    hessian = np.einsum("ncp,ncd,ndq->pq", j, a, j, optimize=True) / len(y_train)
    _, _, g_test = probs_and_grads(x_test, y_test)
    s_test = np.linalg.solve(hessian + damping * np.eye(hessian.shape[0]), g_test.T).T
    return -(s_test @ g_train.T), np.linalg.eigvalsh(hessian)


def our_solvers(a, lambda_max: float):
    """(name, SolverOptions, API in short) of the hf_pairdots rows: all at the benchmark's λ except
    "auto λ". ``lambda_max`` (largest eigenvalue of H) gives LiSSA the same scale the peers get."""
    from hf_pairdots.arguments import SolverOptions

    lam = a.damping
    scale = 2 * (lambda_max + lam)
    return [
        ("hf_pairdots exact", SolverOptions(solver="exact", damping=lam), "SolverOptions(solver='exact', damping=λ)"),
        ("hf_pairdots CG", SolverOptions(solver="cg", damping=lam, cg_tol=1e-4),
         "SolverOptions(solver='cg', damping=λ, cg_tol=1e-4) (max 300 it.)"),
        ("hf_pairdots LiSSA", SolverOptions(solver="lissa", damping=lam),
         "SolverOptions(solver='lissa', damping=λ) (depth 200, batch 128; scale from Lanczos, power_iters 20)"),
        ("hf_pairdots LiSSA, power_iters=60", SolverOptions(solver="lissa", damping=lam, power_iters=60),
         "SolverOptions(solver='lissa', damping=λ, power_iters=60) (the error message's advice)"),
        ("hf_pairdots LiSSA, scale given", SolverOptions(solver="lissa", damping=lam, scale=scale),
         "SolverOptions(solver='lissa', damping=λ, scale=2(λmax+λ)) (depth 200)"),
        ("hf_pairdots LiSSA, scale given, depth 1000", SolverOptions(solver="lissa", damping=lam, scale=scale, depth=1000),
         "SolverOptions(solver='lissa', damping=λ, scale=2(λmax+λ), depth=1000)"),
        ("hf_pairdots LiSSA, auto λ", SolverOptions(solver="lissa"),
         "SolverOptions(solver='lissa') (λ and scale from Lanczos estimates)"),
        ("hf_pairdots low-rank", SolverOptions(solver="lowrank", damping=lam, cg_tol=1e-4),
         "SolverOptions(solver='lowrank', damping=λ, cg_tol=1e-4) (rank 50)"),
    ]


def ours(a, work: Path) -> dict:
    """Fine-tune, cache features, run our solvers; write JOB.pt for the peers. Returns our rows."""
    from hf_pairdots.arguments import SolverOptions
    from hf_pairdots.data import load_text_classification, subsample
    from hf_pairdots.influence import train_influence
    from hf_pairdots.loss import make_train_loss, prepare_data, tokenize
    from hf_pairdots.measurement import loss_measurement_gradient
    from hf_pairdots.modeling import influence_mode
    from hf_pairdots.solve import compute_s_test
    from hf_pairdots.models import load_classifier, load_tokenizer
    from hf_pairdots.training import train_classifier

    torch.manual_seed(0)
    data = load_text_classification(str(LOCAL_SST2))
    train = subsample(data["train"], a.train_size, 0)
    dev = data["validation"].select(range(a.queries))
    tok = load_tokenizer()
    if a.model_dir and (Path(a.model_dir) / "config.json").exists():  # reuse an earlier fine-tune
        model, t_train = load_classifier(a.model_dir), float("nan")
    else:
        model = load_classifier(None, label_names=["negative", "positive"])
        model, t_train = timed(lambda: train_classifier(model, tok, train, epochs=1, max_length=a.max_length,
                                                        show_progress=False))
        if a.model_dir:
            model.save_pretrained(a.model_dir)
    info = {"fine_tune_s": t_train, "n": len(train), "q": len(dev), "damping": a.damping,
            "load_average": " / ".join(open("/proc/loadavg").read().split()[:3])}
    rows = {}
    with influence_mode(model) as m:
        objective = make_train_loss(m, "classifier")
        info["params"] = list(objective.params.names)
        info["p"] = objective.params.numel
        prepared, info["feature_cache_s"] = timed(lambda: prepare_data(objective, tok, train["text"], train["label"],
                                                                       max_length=a.max_length))
        test_batch = objective.prepare(tokenize(tok, dev["text"], dev["label"], a.max_length))

        # The peers' problem: the classifier layer on the pooled features, weights copied.
        x_train = torch.empty(len(train), m.config.hidden_size)
        y_train = torch.empty(len(train), dtype=torch.long)
        for batch in prepared.batches:
            x_train[batch["index"]] = pooled(m, batch["features"], objective.head.cut)
            y_train[batch["index"]] = batch["labels"]
        x_test, y_test = pooled(m, test_batch["features"], objective.head.cut), test_batch["labels"]
        weight = m.classifier.weight.detach().clone()
        bias = m.classifier.bias.detach().clone()
        with torch.no_grad():  # same loss as our objective, example by example
            ours_loss = torch.cat([objective.per_example_loss(objective.theta, b) for b in prepared.batches])
            order = torch.cat([b["index"] for b in prepared.batches])
            theirs = torch.nn.functional.cross_entropy(x_train @ weight.T + bias, y_train, reduction="none")[order]
        info["max_loss_difference"] = float((ours_loss - theirs).abs().max())
        info["train_accuracy"] = float(((x_train @ weight.T + bias).argmax(1) == y_train).float().mean())
        dense, eigenvalues = closed_form_influence(x_train.double().numpy(), y_train.numpy(), x_test.double().numpy(),
                                                   y_test.numpy(), weight.double().numpy(), bias.double().numpy(),
                                                   a.damping)
        info["lambda_min"], info["lambda_max"] = float(eigenvalues[0]), float(eigenvalues[-1])
        info["condition"] = float((eigenvalues[-1] + a.damping) / (max(eigenvalues[0], 0.0) + a.damping))
        info["zero_eigenvalues"] = int((eigenvalues < 1e-6 * eigenvalues[-1]).sum())
        torch.save({"train_features": x_train, "train_labels": y_train, "test_features": x_test,
                    "test_labels": y_test, "weight": weight, "bias": bias, "damping": a.damping,
                    "lambda_max": info["lambda_max"], "work_dir": str(work)}, work / "job.pt")

        def job(options):
            v = loss_measurement_gradient(objective, test_batch)
            result = compute_s_test(objective, prepared, v, options)
            return train_influence(objective, prepared, result.x), result.diagnostics

        job(SolverOptions(solver="cg", damping=a.damping, cg_max_iter=2))  # warm-up (torch.func first calls)
        for name, options, api in our_solvers(a, info["lambda_max"]):
            start = time.perf_counter()
            try:
                scores, diagnostics = job(options)
                error = None
            except Exception as err:  # reported in the table like a peer's failure
                scores, diagnostics, error = None, {}, f"{type(err).__name__}: {err}".splitlines()[0][:160]
            seconds = time.perf_counter() - start
            note = {k: round(diagnostics[k], 4) if isinstance(diagnostics[k], float) else diagnostics[k]
                    for k in ("damping", "scale", "iterations", "depth") if k in diagnostics}
            rows[name] = {"scores": scores, "seconds": seconds, "factor": 1, "api": api, "error": error,
                          "diagnostics": note}
            print(f"{name}: {seconds:.1f} s {note} {error or ''}", flush=True)

    exact = rows["hf_pairdots exact"]["scores"]
    info["closed_form_rel_error"] = float(np.linalg.norm(exact.double().numpy() - dense) / np.linalg.norm(dense))
    return {"rows": rows, "info": info, "exact": exact}


# ---------------------------------------------------------------------------------------------
# Comparison and the Markdown section
# ---------------------------------------------------------------------------------------------

def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(dim=1).argsort(dim=1).double()


def compare(scores: torch.Tensor, exact: torch.Tensor) -> dict:
    """Spearman per query (mean, min), least-squares scale and relative error against ``exact``."""
    s, e = scores.double(), exact.double()
    if not torch.isfinite(s).all():
        return {"nan": int((~torch.isfinite(s)).sum())}
    rs, re = _ranks(s), _ranks(e)
    rs, re = rs - rs.mean(1, keepdim=True), re - re.mean(1, keepdim=True)
    rho = (rs * re).sum(1) / (rs.norm(dim=1) * re.norm(dim=1))
    return {"rho_mean": float(rho.mean()), "rho_min": float(rho.min()),
            "scale": float((s * e).sum() / (e * e).sum()), "rel_error": float((s - e).norm() / e.norm())}


def section(a, info: dict, rows: dict, versions: dict) -> str:
    exact_s = rows["hf_pairdots exact"]["seconds"]
    lines = [
        BEGIN,
        "## (e) peers: the same loss-influence job with peer libraries",
        "",
        "Regenerate (peers in their own venv, see the top of `benchmarks/bench_peers.py`):",
        "",
        "```bash",
        "bash benchmarks/peers/setup.sh ../peers-venv",
        f".venv/bin/python benchmarks/bench_peers.py --peers-python ../peers-venv/bin/python "
        f"--train-size {a.train_size} --queries {a.queries} --damping {a.damping:g}",
        "```",
        "",
        f"Job: I(z, z_test) = -∇L(z_test)ᵀ (H + λI)⁻¹ ∇L(z) for all N = {info['n']:,} training sentences "
        f"(SST-2, `sst_sentence`, subsample seed 0) and Q = {info['q']} dev sentences (the first {info['q']}, gold "
        f"labels), over the classifier layer of MiniLM-L6 fine-tuned for one epoch on those N sentences "
        f"({info['fine_tune_s']:.0f} s; train accuracy {info['train_accuracy']:.3f}): preset `\"classifier\"`, "
        f"P = {info['p']} parameters, H = Hessian of the mean cross-entropy, λ = {a.damping:g} for everyone. "
        f"Spectrum of H (float64, closed form): largest eigenvalue {info['lambda_max']:.3g}; "
        f"{info['zero_eigenvalues']} of {info['p']} are zero to 1e-6 relative (a 2-label softmax layer is "
        "over-parameterised: adding one vector to both rows of W and one number to both biases changes no "
        f"loss: 385 directions; the rest are directions in which the pooled features hardly vary), so cond(H + λI) = {info['condition']:.3g}. Peers get `nn.Linear(384, 2)` with the fine-tuned weights on the pooled "
        f"features (the classifier's input, from our cached features); its per-example losses equal our "
        f"objective's to {info['max_loss_difference']:.1e}. Times exclude the feature cache "
        f"({info['feature_cache_s']:.1f} s, one encoder pass, shared by all) and include everything else: "
        "test gradients, fitting/factorising, the solve and scoring all N x Q pairs. Scores are brought to "
        "our sign and scale by PEERS.md's conversion (-1; captum -N, its Hessian is of the summed loss) "
        "and compared with our exact answer, which matches a closed-form float64 softmax-regression solve "
        f"to a relative error of {info['closed_form_rel_error']:.1e}. ρ: Spearman over the N training "
        f"examples for each query, mean and worst of the Q queries; scale: least-squares slope against "
        "exact (1 = same scale); rel. err: ||I - I_exact|| / ||I_exact||.",
        "",
        "| library / method | API (short) | seconds | x exact | ρ mean | ρ min | scale | rel. err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        api = row["api"].replace("|", "\\|")
        if row["error"]:
            lines.append(f"| {name} | `{api}` | {row['seconds']:.1f} | | failed: {row['error']} | | | |")
            continue
        c = row["metrics"]
        if "nan" in c:
            lines.append(f"| {name} | `{api}` | {row['seconds']:.1f} | {row['seconds'] / exact_s:.1f} | "
                         f"**NaN** ({c['nan']} of {info['n'] * info['q']} scores) | | | |")
            continue
        lines.append(f"| {name} | `{api}` | {row['seconds']:.1f} | {row['seconds'] / exact_s:.1f} | "
                     f"{c['rho_mean']:.4f} | {c['rho_min']:.4f} | {c['scale']:.3g} | {c['rel_error']:.3g} |")
    lines += [
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}; the peers in their own venv. "
        "Our solver diagnostics: " + "; ".join(
            f"{n.removeprefix('hf_pairdots ')}: {json.dumps(r['diagnostics'])}" for n, r in rows.items()
            if r.get("diagnostics")) + ".",
        "",
        f"Timings: one run on a 2-core machine shared with other long CPU jobs (load average "
        f"{info['load_average']}), so every time is noisy: read factors of 2 as noise. Both stages run with "
        f"{a.threads} torch thread(s): with the cores oversubscribed, 2 threads made our small per-batch "
        "products 3-5x slower (threads waiting on each other), and one thread treats everyone alike. "
        "Each method runs once, in the order of the table, after an untimed warm-up (ours: a 2-iteration "
        "CG; peers: imports plus one cheap method of each library on 64 examples).",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers-python", default=str(ROOT.parent / "peers-venv" / "bin" / "python"),
                   help="python of the peers' venv (benchmarks/peers/setup.sh)")
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--damping", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--work", default="runs/bench_peers", help="scratch folder (job.pt, peer outputs)")
    p.add_argument("--model-dir", default=None,
                   help="save the fine-tuned model here, or reuse it if already there (same --train-size!)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both stages (1: steadier on a shared 2-core machine, see RESULTS.md)")
    p.add_argument("--only", nargs="*", default=None, help="run only these peers (names as in the table)")
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not Path(a.peers_python).exists():
        sys.exit(f"no peers venv at {a.peers_python}: run `bash benchmarks/peers/setup.sh` first")

    torch.set_num_threads(a.threads)
    mine = ours(a, work)
    peers_out = work / "peers.pt"
    cmd = [a.peers_python, str(PEER_RUNNER), str(work / "job.pt"), str(peers_out), "--threads", str(a.threads)]
    if a.only is not None:
        cmd += ["--only", *a.only]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    theirs = torch.load(peers_out, weights_only=False)
    versions = {"hf_pairdots": "this repo", **theirs.pop("_versions")}

    rows = dict(mine["rows"])
    rows.update(theirs)
    for row in rows.values():
        if not row["error"]:
            row["metrics"] = compare(row["factor"] * row["scores"], mine["exact"])
    text = section(a, mine["info"], rows, versions)
    write_section(a.out, text, BEGIN, END)
    print(text)
    (work / "summary.json").write_text(json.dumps(
        {"info": mine["info"], "rows": {n: {k: v for k, v in r.items() if k != "scores"} for n, r in rows.items()}},
        indent=2, default=str))


if __name__ == "__main__":
    main()
