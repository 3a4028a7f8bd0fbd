"""Influence-engine benchmark on MiniLM-L6 + SST-2, as ratios to one training epoch.

    .venv/bin/python benchmarks/bench_influence.py --train-size 2000 --out benchmarks/RESULTS.md

Measures, in one run on this machine:
(a) one training epoch (forward + backward + update, Accelerate loop) = the unit;
(b) scoring every training example for one query given s_test (Eq. 4/5, JVP route), for
    params="all" and for the default subset ("head"), and "top";
(c) s_test for 8 saliency measurements at the defaults (solver "auto": CG here), by LiSSA, CG
    and low-rank (refined, and the closed form) on "head": time in epochs and relative error
    against a tightly converged CG answer;
(d) peak memory (peak RSS, and its growth over the RSS before) of feature caching + scoring for
    N = 500, 1,000, 2,000, each in a fresh subprocess, with glibc's default malloc and with a fixed
    mmap threshold;
(f) explaining every dev misclassification (2 labels each, top-5 over all N, Eq. 8 words, no
    edits) with the Explainer at its defaults (solver "auto": CG at N = 2,000), with LiSSA and
    with the low-rank solver.
Speed and memory live here, not in timed tests. The tables replace the text between the
``bench_influence`` markers of ``--out`` (the peers section (e) of bench_peers.py is kept).
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

import torch  # noqa: E402

from hf_pairdots.arguments import ExplainArguments, SolverOptions  # noqa: E402
from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.influence import train_influence  # noqa: E402
from hf_pairdots.loss import make_train_loss, prepare_data, tokenize  # noqa: E402
from hf_pairdots.modeling import influence_mode, model_inputs  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.solve import compute_s_test, resolve_damping_scale  # noqa: E402
from hf_pairdots.training import train_classifier  # noqa: E402
from results_md import write_section  # noqa: E402

LOCAL_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst_sentence"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measurement_gradients(model, tok, objective, texts, max_length):
    rows = []
    for text in texts:
        enc = tokenize(tok, [text], [0], max_length)
        enc.pop("labels")
        rows.append(objective.saliency_gradients(model_inputs(enc), [1], [[1]])[0])
    return torch.stack(rows)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_probe(n: int, max_length: int) -> None:
    """Child process: cache features and score n examples for one query; print the process's peak
    RSS (MB; the model, tokenizer and data set are loaded before) and its growth over the RSS
    before, with the kernel's high-water mark reset first (Linux)."""
    data = load_text_classification(str(LOCAL_SST2))
    train = subsample(data["train"], n, 0)
    tok = load_tokenizer()
    model = load_classifier(None, label_names=["negative", "positive"])
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    with influence_mode(model) as m:
        objective = make_train_loss(m, "head")
        prepared = prepare_data(objective, tok, train["text"], train["label"], max_length=max_length)
        train_influence(objective, prepared, torch.randn(1, objective.params.numel))
    peak = _status_kb("VmHWM")
    print(json.dumps({"n": n, "peak_mb": peak / 1024, "peak_growth_mb": (peak - before) / 1024}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    p.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_probe:
        return memory_probe(a.memory_probe, a.max_length)
    torch.manual_seed(0)
    data = load_text_classification(str(LOCAL_SST2))
    train = subsample(data["train"], a.train_size, 0)
    tok = load_tokenizer()
    model = load_classifier(None, label_names=["negative", "positive"])
    model, epoch = timed(lambda: train_classifier(model, tok, train, epochs=1, max_length=a.max_length,
                                                  show_progress=False))
    rows = [("(a) one training epoch", epoch, 1.0, "")]
    queries = list(data["validation"]["text"][:8])
    with influence_mode(model) as m:
        for params in ("head", "top", "all"):
            objective = make_train_loss(m, params)
            prepared, t_prep = timed(lambda: prepare_data(objective, tok, train["text"], train["label"],
                                                          max_length=a.max_length))
            s = torch.randn(1, objective.params.numel)
            train_influence(objective, prepared, s)  # warm-up
            _, t_score = timed(lambda: train_influence(objective, prepared, s))
            rows.append((f"(b) score all {len(train)} train examples, 1 query, params={params} "
                         f"(P={objective.params.numel:,}; + feature cache {t_prep:.1f} s)", t_score, t_score / epoch, ""))
        objective = make_train_loss(m, "head")
        prepared = prepare_data(objective, tok, train["text"], train["label"], max_length=a.max_length)
        v = measurement_gradients(m, tok, objective, queries, a.max_length)
        references = {}
        for name, options in (("defaults (solver auto: CG at N = 2,000, tol 1e-3)", SolverOptions()),
                              ("LiSSA (defaults: depth 200, auto damping/scale)", SolverOptions(solver="lissa")),
                              ("CG (tol 1e-4)", SolverOptions(solver="cg", cg_tol=1e-4)),
                              ("CG (tol 1e-2)", SolverOptions(solver="cg", cg_tol=1e-2)),
                              ("low-rank (defaults: rank 50, refined by preconditioned CG to tol 1e-3)",
                               SolverOptions(solver="lowrank")),
                              ("low-rank closed form (rank 50, lowrank_refine=False)",
                               SolverOptions(solver="lowrank", lowrank_refine=False))):
            (solver, estimates), t_eig = timed(lambda: resolve_damping_scale(objective, prepared, options))
            result, t = timed(lambda: compute_s_test(objective, prepared, v, solver, eigenvalues=estimates))
            damping = result.diagnostics["damping"]
            if damping not in references:  # the exact answer at the same damping: CG to 1e-6
                references[damping] = compute_s_test(objective, prepared, v, SolverOptions(
                    solver="cg", damping=damping, cg_tol=1e-6, cg_max_iter=500)).x
            ref = references[damping]
            err = float(((result.x - ref).norm(dim=1) / ref.norm(dim=1)).mean())
            rows.append((f"(c) s_test, 8 queries, head, {name}", t + t_eig, (t + t_eig) / epoch,
                         f"incl. {t_eig:.1f} s eigenvalue estimates; rel. error vs CG(1e-6) at the same "
                         f"damping {damping:.3g}: {err:.3f}"))
        dev = data["validation"]
        for name, solver in (("Explainer defaults: solver auto = CG, tol 1e-3", SolverOptions()),
                             ("LiSSA, depth 200", SolverOptions(solver="lissa")),
                             ("low-rank, rank 50, refined to tol 1e-3", SolverOptions(solver="lowrank"))):
            (n_errors, seconds), t_f = timed(lambda: explain_dev_errors(m, tok, train, dev, a.max_length, solver))
            rows.append((f"(f) explain all {n_errors} dev misclassifications of {len(dev)} (2 labels, top-5 of "
                         f"{len(train)}, Eq. 8 words; {name})", t_f, t_f / epoch,
                         f"prediction of the dev set included; Explainer alone {seconds:.1f} s"))
    memory = []
    for n in (500, 1000, 2000):
        row = {"n": n}
        for column, extra in (("default", {}), ("fixed", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
            out = subprocess.run([sys.executable, __file__, "--memory-probe", str(n), "--max-length", str(a.max_length)],
                                 capture_output=True, text=True, check=True, env={**os.environ, **extra})
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            row[column] = probe["peak_growth_mb"]
            row.setdefault("peak", probe["peak_mb"])
        memory.append(row)
    lines = [BEGIN, f"Command: `.venv/bin/python benchmarks/bench_influence.py "
             f"--train-size {a.train_size}`; MiniLM-L6, SST-2 sentences, max length {a.max_length}, "
             f"{torch.get_num_threads()} threads, one run.", "",
             "| what | seconds | epochs | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {w} | {s:.1f} | {e:.3f} | {note} |" for w, s, e, note in rows]
    first = memory[0]
    lines += ["", "(d) peak memory of feature caching + scoring, fresh process each: the process's peak RSS "
              "(model, tokenizer and data set loaded), and its growth over the RSS before the job, with "
              "glibc's default malloc and with a fixed mmap threshold (env `MALLOC_MMAP_THRESHOLD_=131072`: "
              "large freed blocks go back to the system instead of staying in the heap); in brackets the "
              f"change against N = {first['n']}:", "",
              "| N | peak RSS, MB | growth, default malloc, MB | growth, fixed mmap threshold, MB |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {m_['n']} | {m_['peak']:.0f} ({m_['peak'] / first['peak'] - 1:+.1%}) | {m_['default']:.0f} "
              f"({m_['default'] / first['default'] - 1:+.1%}) | {m_['fixed']:.0f} ({m_['fixed'] / first['fixed'] - 1:+.1%}) |"
              for m_ in memory]
    lines.append(END)
    write_section(a.out, "\n".join(lines), BEGIN, END, after_title=True)
    print("\n".join(lines))


BEGIN, END = "<!-- bench_influence:begin -->", "<!-- bench_influence:end -->"


def explain_dev_errors(model, tok, train, dev, max_length: int, solver: SolverOptions) -> tuple[int, float]:
    """(f): every dev misclassification through the Explainer (defaults but ``solver``, no edits)."""
    from hf_pairdots.callback import select_queries
    from hf_pairdots.explain import Explainer
    from hf_pairdots.modeling import predict_proba

    args = ExplainArguments(max_queries=None, max_length=max_length, solver=solver)
    probs = predict_proba(model, tok, list(dev["text"]), max_length=max_length)
    queries, _ = select_queries(list(dev["text"]), list(dev["label"]), probs, args)
    start = time.perf_counter()
    explainer = Explainer(model, tok, train["text"], train["label"], args)
    for begin in range(0, len(queries), 8):
        explainer.explain(queries[begin:begin + 8])
    return len(queries), time.perf_counter() - start


if __name__ == "__main__":
    main()
