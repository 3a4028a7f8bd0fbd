"""What whole-network K-FAC / EK-FAC influence costs as N grows (issue 14, Build item 4).

    flock /tmp/heavy.lock nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac.py \\
        --n 2000 --json /tmp/kfac_2000.json
    ... --n 6920 --json /tmp/kfac_6920.json                       # every SST training sentence
    ... --n 67349 --timed 4000 --json /tmp/kfac_67349.json        # GLUE SST-2 phrases, a timed fraction
    ... --peers-python /tmp/kfac-peers-venv/bin/python --n 200 --queries 4 --json /tmp/kfac_peers.json
    .venv/bin/python benchmarks/bench_kfac.py --render /tmp/kfac_*.json --out benchmarks/RESULTS.md

The peers' venv for ``--peers-python`` (kronfluence must not enter .venv, PEERS.md): a venv that
sees .venv's packages and adds only kronfluence, so torch stays 2.13.0:

    python3 -m venv /tmp/kfac-peers-venv
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/kfac-peers-venv/lib/python3.11/site-packages/main.pth
    /tmp/kfac-peers-venv/bin/pip install --no-deps kronfluence==1.0.1

One process per N (peak RSS is per process). The model is bench_explanations' fine-tuned MiniLM-L6
(2,000 SST-2 sentences, 2 epochs, cached under ``--cache``; cost does not depend on which weights).
Training data: N = 2,000 the same seeded subsample of ``sst_sentence`` as bench_explanations,
N = 6,920 all of ``sst_sentence``'s training split, N = 67,349 GLUE SST-2 (``sst2_glue``). With
``--timed M`` (M < N) everything is run on a seeded subsample of M examples and the times of the
passes over the data (factor fitting, scoring) are scaled by N / M: both are sums over examples,
so linear in N; the eigendecompositions and solves do not depend on N and are not scaled.

Measured, with ``params="linear"`` (every nn.Linear: 10.8 M of MiniLM-L6's parameters):

* the unit, one training epoch at N: ``train_classifier`` (the bench_explanations training loop)
  on a copy of the model for one epoch over 320 examples, scaled by N / 320;
* for each curvature: the factor fit (:func:`hf_pairdots.kfac.fit_kronecker`), the closed-form
  solve of Q query rows (∇θ L of Q dev sentences), and the scoring of every training example for
  those rows (:func:`hf_pairdots.influence.train_influence`: one forward-mode pass per row);
* the factor memory (floats held by the Kronecker factors) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import concatenate_datasets  # noqa: E402

from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.influence import example_gradients, train_influence  # noqa: E402
from hf_pairdots.kfac import fit_kronecker  # noqa: E402
from hf_pairdots.loss import make_train_loss, prepare_data, tokenize  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.training import train_classifier  # noqa: E402
from bench_explanations import SHARED  # noqa: E402
from results_md import write_section  # noqa: E402

BEGIN, END = "<!-- bench_kfac:begin -->", "<!-- bench_kfac:end -->"
SST_SENTENCES = 6920
EPOCH_SAMPLE = 320


def training_set(n: int, seed: int):
    """The N training examples: a subsample of SST sentences up to 6,920, else GLUE SST-2 phrases."""
    if n <= SST_SENTENCES:
        train = load_text_classification(str(SHARED / "sst_sentence"))["train"]
        return train if n == len(train) else subsample(train, n, seed), "sst_sentence"
    glue = SHARED / "sst2_glue"  # its train.tsv + dev.tsv = GLUE SST-2's training phrases
    train = concatenate_datasets([load_text_classification(str(glue / f))["train"] for f in ("train.tsv", "dev.tsv")])
    if n != len(train):
        raise ValueError(f"--n {n}: GLUE SST-2 has {len(train)} training phrases")
    return train, "sst2_glue"


def epoch_seconds(model, tok, train, n: int, max_length: int, seed: int) -> float:
    """One training epoch at N, from one epoch over EPOCH_SAMPLE examples on a copy of the model."""
    sample = subsample(train, min(EPOCH_SAMPLE, len(train)), seed + 1)
    start = time.perf_counter()
    train_classifier(copy.deepcopy(model), tok, sample, epochs=1, max_length=max_length, seed=seed, show_progress=False)
    return (time.perf_counter() - start) * n / len(sample)


def factor_floats(fitted) -> int:
    """Floats the fitted operator and its inverse hold (factors, eigenvectors, eigenvalues)."""
    seen, total = set(), 0
    for holder in (fitted.forward, fitted.operator):
        for name, value in vars(holder).items():
            if not any(word in name for word in ("covariance", "eigen", "inverse", "_inv")):
                continue  # the parameters, the data, ...
            for t in _tensors(value):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel()
    return total


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def measure(a) -> dict:
    torch.set_num_threads(1)
    tok = load_tokenizer()
    folder = Path(a.cache) / f"minilm_n2000_e2_L{a.max_length}_s{a.seed}"
    model = load_classifier(str(folder / "model")).eval()
    train, source = training_set(a.n, a.seed)
    timed = train if not a.timed or a.timed >= len(train) else subsample(train, a.timed, a.seed)
    scale = a.n / len(timed)
    out = {"n": a.n, "source": source, "timed_examples": len(timed), "queries": a.queries, "threads": 1,
           "max_length": a.max_length}
    out["epoch_seconds"] = epoch_seconds(model, tok, train, a.n, a.max_length, a.seed)
    objective = make_train_loss(model, "linear")
    out["params"] = objective.params.numel
    start = time.perf_counter()
    data = prepare_data(objective, tok, list(timed["text"]), list(timed["label"]), max_length=a.max_length)
    out["prepare_seconds"] = time.perf_counter() - start
    dev = load_text_classification(str(SHARED / "sst_sentence"))["validation"]
    queries = prepare_data(objective, tok, list(dev["text"][:a.queries]), list(dev["label"][:a.queries]),
                           batch_size=a.queries, max_length=a.max_length)
    v = example_gradients(objective, queries.batches[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out["curvatures"] = {}
    for curvature in a.curvatures:
        row = {}
        start = time.perf_counter()
        fitted = fit_kronecker(objective, data, curvature, a.damping)
        fit = time.perf_counter() - start
        start = time.perf_counter()
        s_test = fitted.solve(v)
        row["solve_seconds"] = time.perf_counter() - start  # eigendecompositions (first solve) + products
        start = time.perf_counter()
        scores = train_influence(objective, data, s_test)
        score = time.perf_counter() - start
        row.update(fit_seconds=fit * scale, score_seconds=score * scale, factor_mb=factor_floats(fitted) * 4 / 2**20,
                   fit_epochs=fit * scale / out["epoch_seconds"], score_epochs=score * scale / out["epoch_seconds"],
                   score_epochs_per_row=score * scale / out["epoch_seconds"] / a.queries,
                   finite=bool(torch.isfinite(scores).all()))
        out["curvatures"][curvature] = row
        del fitted
        checkpoint(a, out)
    out["weights_unchanged"] = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    out["eval_mode"] = not model.training
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    checkpoint(a, out)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = lambda x: x.argsort().argsort().double()  # noqa: E731
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def peers(a) -> dict:
    """The whole-network loss-influence job against kronfluence EK-FAC (``--peers-python``): Koh &
    Liang's I(z, L(z_test)) = -∇L(z_test)ᵀ (C + λI)⁻¹ ∇L(z) over every nn.Linear, for the first
    ``--queries`` dev sentences and a seeded subsample of ``--n`` training sentences; kronfluence's
    scores times -1 (PEERS.md). Spearman per query against ours (mean and worst), and times."""
    torch.set_num_threads(1)
    tok = load_tokenizer()
    folder = Path(a.cache) / f"minilm_n2000_e2_L{a.max_length}_s{a.seed}"
    model = load_classifier(str(folder / "model")).eval()
    train, _ = training_set(a.n, a.seed)
    dev = load_text_classification(str(SHARED / "sst_sentence"))["validation"]
    texts, labels = list(train["text"]), list(train["label"])
    qtexts, qlabels = list(dev["text"][:a.queries]), list(dev["label"][:a.queries])
    objective = make_train_loss(model, "linear")
    data = prepare_data(objective, tok, texts, labels, max_length=a.max_length)
    queries = prepare_data(objective, tok, qtexts, qlabels, batch_size=a.queries, max_length=a.max_length)
    order = queries.batches[0]["index"]
    v = torch.empty(a.queries, objective.params.numel)
    v[order] = example_gradients(objective, queries.batches[0])
    out = {"n": a.n, "queries": a.queries, "damping": a.damping, "ours": {}}
    for curvature in a.curvatures:
        start = time.perf_counter()
        fitted = fit_kronecker(objective, data, curvature, a.damping)
        scores = train_influence(objective, data, fitted.solve(v))
        out["ours"][curvature] = {"seconds": time.perf_counter() - start, "scores": scores}
    keep = ("input_ids", "attention_mask", "token_type_ids", "labels")
    job = {"model_dir": str(folder / "model"), "damping": a.damping,
           "train": {k: t for k, t in tokenize(tok, texts, labels, a.max_length, None).items() if k in keep},
           "query": {k: t for k, t in tokenize(tok, qtexts, qlabels, a.max_length, None).items() if k in keep}}
    with tempfile.TemporaryDirectory() as work:
        torch.save(job, f"{work}/job.pt")
        start = time.perf_counter()
        subprocess.run([a.peers_python, str(Path(__file__).parent / "peers" / "run_kronfluence_network.py"),
                        f"{work}/job.pt", f"{work}/out.pt"], check=True)
        peer = torch.load(f"{work}/out.pt")
        peer["seconds"] = time.perf_counter() - start
    theirs = -peer["scores"].double()  # kronfluence's sign is the opposite of Eq. 4's (PEERS.md)
    for row in out["ours"].values():
        rho = [spearman(row["scores"][q].double(), theirs[q]) for q in range(a.queries)]
        row.update(spearman_mean=sum(rho) / len(rho), spearman_min=min(rho),
                   scale=float((row["scores"].double() * theirs).sum() / theirs.square().sum()))
        del row["scores"]
    out["kronfluence"] = {k: peer[k] for k in ("fit_seconds", "score_seconds", "seconds", "versions")}
    return out


def checkpoint(a, out: dict) -> None:
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


def table(all_runs: list[dict]) -> str:
    runs = [r for r in all_runs if "curvatures" in r]
    lines = [BEGIN, "## Whole-network K-FAC / EK-FAC: cost against N", "",
             "Command: see `benchmarks/bench_kfac.py` (one process per N, `flock /tmp/heavy.lock nice -n 19`, 1 torch "
             "thread, a shared 2-core machine, one run each). params `linear` (every nn.Linear of MiniLM-L6: "
             f"{runs[0]['params'] / 1e6:.1f} M parameters), type-2 Fisher (exact output Hessian), damping λ = "
             "min_damping. Epoch = one `train_classifier` epoch at that N (timed on 320 examples, scaled). Fit and "
             "score over a subsample of `timed` examples are scaled by N / timed (sums over examples); the solve is "
             "not. Score = Eq. 5 over every training example for Q query rows (one forward-mode pass per row).", "",
             "| N (data) | timed | epoch s | curvature | fit s | fit epochs | solve s (Q rows) | score epochs per row "
             "| factors MB | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(runs, key=lambda r: r["n"]):
        for curvature, c in r["curvatures"].items():
            lines.append(f"| {r['n']:,} ({r['source']}) | {r['timed_examples']:,} | {r['epoch_seconds']:.0f} | "
                         f"{curvature} | {c['fit_seconds']:.0f} | {c['fit_epochs']:.2f} | {c['solve_seconds']:.1f} "
                         f"({r['queries']}) | {c['score_epochs_per_row']:.2f} | {c['factor_mb']:.0f} | "
                         f"{r.get('peak_rss_mb', float('nan')):.0f} |")
    for r in (r for r in all_runs if "ours" in r):
        k = r["kronfluence"]
        lines += ["", f"Against kronfluence {k['versions']['kronfluence']} EK-FAC (every nn.Linear, sampled-label "
                  f"Fisher, padding masked, damping_factor λ = {r['damping']}; its scores x -1, PEERS.md): the "
                  f"loss-influence job I(z, L(z_test)) for {r['queries']} dev sentences x {r['n']} training sentences "
                  "(`bench_kfac.py --peers-python VENV/bin/python --n N --queries Q`). Spearman per query against "
                  "kronfluence; scale = least-squares factor ours / theirs; time = fit + solve + score, 1 thread.", "",
                  "| method | Spearman mean | worst query | scale | seconds |", "| --- | --- | --- | --- | --- |"]
        for curvature, c in r["ours"].items():
            lines.append(f"| hf_pairdots {curvature} (type-2 Fisher) | {c['spearman_mean']:.4f} | "
                         f"{c['spearman_min']:.4f} | {c['scale']:.3f} | {c['seconds']:.0f} |")
        lines.append(f"| kronfluence ekfac | 1 | 1 | 1 | {k['fit_seconds'] + k['score_seconds']:.0f} (fit "
                     f"{k['fit_seconds']:.0f}, score {k['score_seconds']:.0f}) |")
    return "\n".join(lines + [END])


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--timed", type=int, default=None, help="run on this many examples and scale the passes to N")
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--curvatures", nargs="+", default=["kfac", "ekfac"])
    p.add_argument("--damping", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="/tmp/bench_cache", help="bench_explanations' trained-model folder")
    p.add_argument("--json", default=None)
    p.add_argument("--render", nargs="+", default=None, help="write the table from these JSON files")
    p.add_argument("--peers-python", default=None, help="run the kronfluence comparison with this interpreter "
                                                         "(a venv with kronfluence 1.0.1, see PEERS.md)")
    p.add_argument("--out", default=None, help="RESULTS.md to update")
    a = p.parse_args(argv)
    if a.peers_python:
        out = peers(a)
        checkpoint(a, out)
        return out
    if not a.render:
        return measure(a)
    text = table([json.loads(Path(f).read_text()) for f in a.render])
    print(text)
    if a.out:
        write_section(a.out, text, BEGIN, END)
    return None


if __name__ == "__main__":
    main()
