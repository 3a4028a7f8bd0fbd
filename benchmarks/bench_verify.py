"""Do the explanations survive retraining? hf_pairdots.verify on MiniLM-L6 / SST-2.

    nice .venv/bin/python benchmarks/bench_verify.py --out benchmarks/RESULTS.md

SST-2 sentences (``../shared/data/sst_sentence``), a seeded subsample of ``--train-size``
training sentences; the packaged MiniLM-L6 fine-tuned on them (:func:`hf_pairdots.training.
train_classifier`, ``--epochs``, max length 64); the first ``--queries`` misclassified dev
sentences explained at the defaults (``params="auto"`` = pooler + classifier, saliency of the most
salient word for the predicted and the gold label); then :func:`hf_pairdots.verify.verify_run`
on the first ``--rows`` rows with k = ``--k`` (the issue's targets are for k = 5 % of N): the
top-k, bottom-k and ``--random-sets`` random sets of k removed, retrained with ``--protocol``
(``warm``: ``--warm-epochs`` from the trained weights at ``--warm-lr``; ``initial``: the recipe
again from the packaged MiniLM with the same seed; ``--retrain-params explained`` trains only the
explained pooler + classifier, which makes a job about 3x cheaper on a CPU), re-measured. Targets (issue): direction
right for >= 80 % of rows, Spearman >= 0.6, targeted >= 3x random. The table replaces the text
between the ``bench_verify`` markers of ``--out`` (appended at the end when they are absent).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_pairdots.arguments import ExplainArguments  # noqa: E402
from hf_pairdots.pipeline import explain_dataset  # noqa: E402
from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.models import PACKAGED_MINILM, load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.training import accuracy, train_classifier  # noqa: E402
from hf_pairdots.verify import VerifyArguments, verify_run  # noqa: E402
from results_md import write_section  # noqa: E402

SHARED_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst_sentence"
BEGIN, END = "<!-- bench_verify:begin -->", "<!-- bench_verify:end -->"


def measure(a) -> dict:
    data = load_text_classification(str(a.data or SHARED_SST2))
    names = data["train"].features["label"].names
    train = subsample(data["train"], a.train_size, a.seed)
    tok = load_tokenizer()
    start = time.perf_counter()
    if a.model_dir and Path(a.model_dir).is_dir():  # a model this script trained and kept before
        model = load_classifier(a.model_dir)
    else:
        model = train_classifier(load_classifier(None, label_names=names), tok, train, epochs=a.epochs, max_length=64,
                                 seed=a.seed, show_progress=False)
        if a.model_dir:
            model.save_pretrained(a.model_dir)
    trained = round(time.perf_counter() - start, 1)
    run = Path(a.run_dir or tempfile.mkdtemp(prefix="bench_verify_"))
    explain_args = ExplainArguments(queries="misclassified", max_queries=a.queries, max_length=64, seed=a.seed,
                                    saliency_mode=a.saliency_mode)
    start = time.perf_counter()
    explain_dataset(model, tok, train, data["validation"], explain_args, run)
    explained = round(time.perf_counter() - start, 1)
    args = VerifyArguments(k=a.k, protocol=a.protocol, random_sets=a.random_sets, max_rows=a.rows,
                           init_model=PACKAGED_MINILM if a.protocol != "warm" else None, epochs=a.epochs,
                           warm_epochs=a.warm_epochs, warm_learning_rate=a.warm_lr, seed=a.seed,
                           lds_subsets=a.lds_subsets, num_threads=a.threads, retrain_params=a.retrain_params)
    start = time.perf_counter()
    report = verify_run(run, args, model=model, tokenizer=tok, train=train, show_progress=True)
    return {"train_size": len(train), "dev_accuracy": accuracy(model, tok, data["validation"], max_length=64),
            "train_seconds": trained, "explain_seconds": explained,
            "verify_seconds": round(time.perf_counter() - start, 1), "run": str(run), "args": args.to_dict(),
            "k": report["k"], "rows": len(report["rows"]), "protocols": report["protocols"]}


def table(result: dict, a) -> str:
    protocol = f"warm: {a.warm_epochs:g} epoch at lr {a.warm_lr:g}" if a.protocol == "warm" else a.protocol
    lines = [BEGIN, "## Retraining check of explanations (hf_pairdots.verify)", "",
             f"`python benchmarks/bench_verify.py {' '.join(a.argv)}` (1 torch thread, 2 shared CPU cores): "
             f"MiniLM-L6 fine-tuned on {result['train_size']} SST-2 sentences ({a.epochs:g} epoch, dev accuracy "
             f"{result['dev_accuracy']:.3f}), {result['rows']} rows (saliency of the most salient word for a label "
             f"of the first misclassified dev sentences), k = {result['k']} "
             f"({100 * result['k'] / result['train_size']:.0f} % of N), {a.random_sets} random set(s) per row, "
             f"retraining {a.retrain_params} parameters ({protocol}). "
             f"Seconds: training {result['train_seconds']}, explanation {result['explain_seconds']}, "
             f"check {result['verify_seconds']}.", "",
             "| protocol | direction right (rows) | sign agreement (sets) | Spearman | targeted | random | ratio | LDS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for protocol, n in result["protocols"].items():
        lines.append(f"| {protocol} | {n['rows_direction_right']:.2f} | {n['sign_agreement']:.2f} | "
                     f"{n['spearman']:.2f} | {n['targeted_effect']:.3g} | {n['random_effect']:.3g} | "
                     f"{n['ratio']:.2f} | {n['lds']:.2f} |")
    lines += ["", "Per row (kind: predicted → actual change of the measurement):", ""]
    for protocol, n in result["protocols"].items():
        for q, row in enumerate(n["rows"]):
            pairs = ", ".join(f"{p['kind']} {p['predicted']:.3g} → {p['actual']:.3g}" for p in row["pairs"])
            lines.append(f"- {protocol}, row {q}: {pairs}")
    lines += ["", "Targets (issue, SST-2, k = 5 % of N): direction right for >= 80 % of rows, Spearman >= 0.6, "
              "targeted >= 3x random.", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None)
    p.add_argument("--train-size", type=int, default=500)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--random-sets", type=int, default=1)
    p.add_argument("--protocol", default="warm")
    p.add_argument("--warm-epochs", type=float, default=1)
    p.add_argument("--warm-lr", type=float, default=1e-5)
    p.add_argument("--lds-subsets", type=int, default=0)
    p.add_argument("--retrain-params", default="all", choices=["all", "explained"])
    p.add_argument("--saliency-mode", default="gradient", help="ExplainArguments.saliency_mode of the explanation run")
    p.add_argument("--model-dir", default=None, help="keep the trained model here and reuse it on a rerun")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="explanation run folder (default: a new temp folder)")
    p.add_argument("--out", default=None, help="Markdown file to put the table in (default: print only)")
    p.add_argument("--json", default=None, help="also write the raw result here")
    a = p.parse_args(argv)
    a.argv = argv if argv is not None else __import__("sys").argv[1:]
    torch.set_num_threads(a.threads)
    result = measure(a)
    text = table(result, a)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if a.out:
        write_section(a.out, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
