"""Are flipped training labels surfaced? Self-influence against influence on the dev loss.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_noisy_labels.py --out benchmarks/RESULTS.md

SST-2 sentences (``../shared/data/sst_sentence``), a seeded subsample of 2,000 training sentences
with 5 % of their labels flipped (seeded), the packaged MiniLM-L6 fine-tuned on them for 2 epochs
(:func:`hf_pairdots.training.train_classifier`, max length 64, as recipes/pair_the_dots.py).
Then, with the base rate of 5 % to compare with, the share of flipped examples in:

* the top decile of self-influence ∇L(z)ᵀ(H + λI)⁻¹∇L(z) (:func:`hf_pairdots.influence.
  self_influence` at its defaults) over ``params="classifier"`` (exact solver) and over the
  explanations' default ``"head"`` (CG, one solve per scored row: scored for a seeded random
  ``--head-rows`` of the training rows, 500 by default, the Hessian still over all of them);
* the harmful decile (largest I(z, L_dev): up-weighting z raises the dev loss) and the helpful
  decile (smallest) of the influence on the mean loss of the clean dev set, at the defaults
  (``"head"``, ``SolverOptions()``);
* the top decile of the training loss itself (the cheapest detector, for reference);

and :func:`hf_pairdots.influence.tail_disagreement` of each self-influence against the dev-loss
ranking. The table replaces the text between the ``bench_noisy_labels`` markers of ``--out``
(appended at the end when they are absent).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_pairdots.arguments import SolverOptions  # noqa: E402
from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.influence import mean_loss_gradient, self_influence, tail_disagreement, train_influence  # noqa: E402
from hf_pairdots.loss import make_train_loss, prepare_data  # noqa: E402
from hf_pairdots.modeling import influence_mode  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.solve import compute_s_test  # noqa: E402
from hf_pairdots.training import accuracy, train_classifier  # noqa: E402
from results_md import write_section  # noqa: E402

LOCAL_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst_sentence"
BEGIN, END = "<!-- bench_noisy_labels:begin -->", "<!-- bench_noisy_labels:end -->"


def noisy_training_set(train, rate: float, seed: int):
    """``train`` with round(rate x n) labels flipped (binary), and the flipped rows."""
    flipped = sorted(random.Random(seed).sample(range(len(train)), round(rate * len(train))))
    chosen = set(flipped)
    noisy = train.map(lambda row, i: {"label": 1 - row["label"] if i in chosen else row["label"]}, with_indices=True)
    return noisy, flipped


def share(scores: torch.Tensor, flipped: list[int], largest: bool = True) -> float:
    """Share of ``flipped`` among the decile of ``scores`` (largest or smallest)."""
    k = round(0.1 * len(scores))
    return len(set(torch.topk(scores, k, largest=largest).indices.tolist()) & set(flipped)) / k


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 1)


def measure(a) -> dict:
    data = load_text_classification(str(LOCAL_SST2))
    names = data["train"].features["label"].names
    train, flipped = noisy_training_set(subsample(data["train"], a.train_size, a.seed), a.noise, a.seed)
    dev = data["validation"]
    tok = load_tokenizer()
    torch.manual_seed(a.seed)
    model, train_seconds = timed(lambda: train_classifier(load_classifier(None, label_names=names), tok, train,
                                                          epochs=a.epochs, max_length=a.max_length, seed=a.seed,
                                                          show_progress=False))
    out = {"train_size": len(train), "flipped": len(flipped), "base_rate": len(flipped) / len(train),
           "epochs": a.epochs, "dev_accuracy": accuracy(model, tok, dev, max_length=a.max_length),
           "seconds": {"train": train_seconds}}
    texts, labels = list(train["text"]), list(train["label"])
    with influence_mode(model) as m:
        objectives = {params: make_train_loss(m, params) for params in ("classifier", "head")}
        prepared = {params: prepare_data(objective, tok, texts, labels, batch_size=64, max_length=a.max_length)
                    for params, objective in objectives.items()}
        selves = {}

        def self_influence_of(params, rows):  # the slow one ("head", CG: one solve per scored example) runs last
            result, seconds = timed(lambda: self_influence(objectives[params], prepared[params], rows=rows))
            mine = [j for j, i in enumerate(rows) if i in set(flipped)]
            selves[params] = result.scores
            out[f"self_influence_{params}"] = {"scored": len(rows), "flipped_scored": len(mine),
                                               "top_decile_share": share(result.scores, mine),
                                               "P": objectives[params].params.numel,
                                               **{k: v for k, v in result.diagnostics.items() if k != "block_rows"}}
            out["seconds"][f"self_influence_{params}"] = seconds
            checkpoint(a, out)

        self_influence_of("classifier", list(range(len(train))))
        # the explanations' defaults: params "head" (= "auto" for a plain model), SolverOptions()
        objective, data = objectives["head"], prepared["head"]
        with torch.no_grad():
            losses = torch.cat([objective.per_example_loss(objective.theta, b) for b in data.batches]).cpu()
        loss = torch.empty_like(losses)
        loss[torch.cat([b["index"] for b in data.batches])] = losses
        out["training_loss"] = {"top_decile_share": share(loss, flipped)}
        dev_data = prepare_data(objective, tok, list(dev["text"]), list(dev["label"]), batch_size=64,
                                max_length=a.max_length)

        def dev_influence():
            solved = compute_s_test(objective, data, mean_loss_gradient(objective, dev_data)[None], SolverOptions())
            return train_influence(objective, data, solved.x)[0], {**solved.diagnostics,
                                                                   "relative_residual": solved.relative_residual}

        (influence, diagnostics), seconds = timed(dev_influence)
        out["seconds"]["dev_loss_influence"] = seconds
        out["dev_loss_influence"] = {"harmful_decile_share": share(influence, flipped),
                                     "helpful_decile_share": share(influence, flipped, largest=False),
                                     "solver": diagnostics["solver"], "damping": diagnostics["damping"],
                                     "relative_residual": diagnostics["relative_residual"][0]}
        out["tail_disagreement_classifier"] = tail_disagreement(selves["classifier"], influence)
        checkpoint(a, out)
        head_rows = (sorted(random.Random(a.seed + 1).sample(range(len(train)), a.head_rows)) if a.head_rows
                     else list(range(len(train))))
        self_influence_of("head", head_rows)
        mine = [j for j, i in enumerate(head_rows) if i in set(flipped)]
        out["self_influence_classifier"]["top_decile_share_on_head_rows"] = share(selves["classifier"][head_rows], mine)
        out["tail_disagreement_head"] = tail_disagreement(selves["head"], influence[head_rows])
    return out


def checkpoint(a, out: dict) -> None:
    """The numbers so far, to ``--json`` (a long run killed half-way keeps them)."""
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


def table(r: dict, command: str) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    si_c, si_h, dev = r["self_influence_classifier"], r["self_influence_head"], r["dev_loss_influence"]
    head_base = si_h["flipped_scored"] / si_h["scored"]
    rows = [
        ("top decile of self-influence, params classifier", si_c["top_decile_share"], r["base_rate"],
         f"P = {si_c['P']:,}, solver {si_c['solver']}, damping {si_c['damping']:.3g}, "
         f"{r['seconds']['self_influence_classifier']} s"),
        ("top decile of self-influence, params head (default)", si_h["top_decile_share"], head_base,
         f"P = {si_h['P']:,}, solver {si_h['solver']}, damping {si_h['damping']:.3g}, max residual "
         f"{si_h['max_relative_residual']:.1e}, {r['seconds']['self_influence_head']} s; scored "
         f"{si_h['scored']:,} random rows holding {si_h['flipped_scored']} flipped (base rate {pct(head_base)})"),
        ("top decile of self-influence, params classifier, on the rows scored for head",
         si_c["top_decile_share_on_head_rows"], head_base, "the same rows as the line above"),
        ("harmful decile of dev-loss influence (defaults)", dev["harmful_decile_share"], r["base_rate"],
         f"head, solver {dev['solver']}, damping {dev['damping']:.3g}, {r['seconds']['dev_loss_influence']} s"),
        ("helpful decile of dev-loss influence (defaults)", dev["helpful_decile_share"], r["base_rate"], ""),
        ("top decile of the training loss", r["training_loss"]["top_decile_share"], r["base_rate"], "reference"),
    ]
    lines = [BEGIN, "## Noisy labels: self-influence against influence on the dev loss", "",
             f"Command: `{command}`; SST-2 sentences, {r['train_size']:,} training sentences (subsample seed 0), "
             f"{r['flipped']} labels flipped (seeded), packaged MiniLM-L6 fine-tuned {r['epochs']:g} epochs "
             f"(training {r['seconds']['train']} s, dev accuracy {r['dev_accuracy']:.4f} on the clean 872), "
             f"max length 64, one run. Base rate {pct(r['base_rate'])}.", "",
             "| share of flipped examples in ... | share | x base rate | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {pct(value)} | {value / base:.1f} | {note} |" for name, value, base, note in rows]
    lines += ["", "`tail_disagreement` (top decile of self-influence against the dev-loss deciles; "
              "disagree = z > 2):", "",
              "| self-influence over | in helpful | in harmful | z | disagree |", "| --- | --- | --- | --- | --- |"]
    for params in ("classifier", "head (its scored rows)"):
        t = r[f"tail_disagreement_{params.split()[0]}"]
        lines.append(f"| {params} | {pct(t['in_helpful'])} | {pct(t['in_harmful'])} | {t['z']:.2f} | {t['disagree']} |")
    return "\n".join(lines + [END])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.05, help="share of training labels flipped")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-rows", type=int, default=500,
                   help="self-influence over 'head' for a seeded random subset of this many training rows (the "
                        "Hessian is always over all): CG costs one solve per row; 0 = all")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--out", default=None, help="RESULTS.md to update")
    a = p.parse_args(argv)
    result = measure(a)
    print(json.dumps(result, indent=2))
    checkpoint(a, result)
    if a.out:
        command = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_noisy_labels.py --out benchmarks/RESULTS.md"
        write_section(a.out, table(result, command), BEGIN, END)
    return result


if __name__ == "__main__":
    main()
