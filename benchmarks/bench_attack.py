"""Training-set attack (Sec. 4.2, Table 4) against the baselines a reviewer asks for, on SST-2.

    flock /tmp/heavy.lock timeout 3h .venv/bin/python benchmarks/bench_attack.py \\
        --data ../shared/data/sst_sentence --run-dir runs/bench_attack --out benchmarks/RESULTS.md

Setup: the packaged MiniLM-L6 fine-tuned on a seeded subsample of ``--train-size`` SST-2
sentences (``--epochs`` at ``--lr``); the targeted queries are the first ``--queries`` test
sentences of a ``--test-size`` test sample that this model classifies correctly; the other test
sentences of the sample are the untouched ones (collateral damage).

Methods, each at the same budget k edited training rows per targeted query (k in ``--ks``):

- ``saliency``: the paper's attack, ``attack_combined`` (↓I(z, w_y) and ↑I(z, w_y') alternated,
  one-word WordNet synonym edits by the two-stage search; :func:`recipes.common.explain_with_edits`);
- ``random_same``: a uniformly drawn synonym substitution of the same rows
  (:func:`~hf_pairdots.augment.dataset.random_baseline`);
- ``random_rows``: a random synonym edit of as many random rows, disjoint from every row any
  influence method edits (:func:`random_row_edits`);
- ``remove``: the saliency method's rows removed (influence-ranked removal);
- ``relabel``: the saliency method's rows with their label flipped (binary tasks);
- ``loss``: edits chosen by influence on the query's gold *loss* instead of its saliency
  (Koh & Liang's training-set attack; :func:`loss_edits`): rows ranked by -I(z, L) (the most
  helpful), each edited to raise I(z, z̃, L) (Eq. 7 with the loss s_test).

Every training set is retrained with :func:`hf_pairdots.verify.retrain` under each protocol of
``--protocol`` (``warm``: ``--warm-epochs`` from the trained weights at ``--warm-lr``;
``initial``: ``--epochs`` from the packaged MiniLM with the seed), with equal optimiser steps
(:func:`hf_pairdots.verify.job_epochs`), once per seed of ``--seeds`` (the retraining seed and
the random baselines' seed; the explanations and the influence edits are made once, seed 0).
``unedited`` retrains the training set as is: the noise floor of the protocol.

Metrics per (protocol, method, k, seed): the targeted queries misclassified after retraining
(flip; all were correct before), the targeted accuracy, the accuracy on the untouched test
sentences, the edits made and the distinct rows per query. Tables: mean ± std over seeds, and the
flip rate pooled over seeds x queries with a 95 % Wilson interval (the queries of one seed are
not independent of each other's edits: read the interval as a lower bound on the uncertainty).
Every job is one JSON file under ``<run-dir>/jobs/``: a rerun skips it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "recipes"))

import common  # noqa: E402  (sets HF_HUB_OFFLINE)

import datasets  # noqa: E402
import torch  # noqa: E402

from hf_pairdots.augment.dataset import edits_from_proposals, random_baseline  # noqa: E402
from hf_pairdots.augment.search import search_edit  # noqa: E402
from hf_pairdots.io import atomic_write_text  # noqa: E402
from results_md import write_section  # noqa: E402

BEGIN, END = "<!-- bench_attack:begin -->", "<!-- bench_attack:end -->"
METHODS = ("saliency", "random_same", "random_rows", "remove", "relabel", "loss")
TITLES = {"unedited": "unedited (retrained as is)", "saliency": "influence on saliency (paper, combined)",
          "random_same": "random synonyms, same rows", "random_rows": "random synonyms, random rows",
          "remove": "remove the same rows", "relabel": "relabel the same rows",
          "loss": "influence on loss (Koh & Liang)"}
OBJECTIVE = "attack_combined"
LOSS_GOAL = "attack_down"
"""The loss attack searches on m = -L(z_test) with the goal that lowers m (synonyms only)."""


# --------------------------------------------------------------------------- metrics

def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a binomial proportion ``successes / n``.

    Raises:
        ValueError: ``n`` < 1 or ``successes`` outside [0, n].
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson({successes}, {n}): need n >= 1 and 0 <= successes <= n")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def flips(predictions, golds) -> list[bool]:
    """Per targeted query, whether the retrained model misclassifies it (the queries were all
    classified correctly before the attack)."""
    predictions, golds = list(predictions), list(golds)
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} queries")
    return [int(p) != int(g) for p, g in zip(predictions, golds)]


def distinct_rows_per_query(edits: datasets.Dataset, num_queries: int) -> float:
    """Mean number of distinct training rows edited per targeted query."""
    pairs = {(q, i) for q, i in zip(edits["query_index"], edits["source_train_index"])}
    return len(pairs) / num_queries


# --------------------------------------------------------------------------- baselines' edits

def removed(train: datasets.Dataset, rows) -> datasets.Dataset:
    """``train`` without ``rows`` (influence-ranked removal), in order."""
    from hf_pairdots.verify import job_training_set

    return job_training_set(train, {"remove": sorted(set(rows)), "add": []})


def relabelled(train: datasets.Dataset, rows) -> datasets.Dataset:
    """``train`` with the labels of ``rows`` flipped (binary tasks only).

    Raises:
        ValueError: the task is not binary.
    """
    names = train.features["label"].names
    if len(names) != 2:
        raise ValueError(f"relabelling flips binary labels; {names} has {len(names)}")
    chosen = set(rows)
    return train.map(lambda row, i: {"label": 1 - row["label"] if i in chosen else row["label"]}, with_indices=True)


def random_row_edits(train: datasets.Dataset, count: int, exclude, *, seed: int, tokenizer, max_length: int,
                     max_candidates: int, num_queries: int, objective: str = "attack_down") -> datasets.Dataset:
    """``count`` random edits of distinct random rows not in ``exclude`` (seeded; rows without a
    candidate are passed over), dealt out to the queries round robin in ``query_index``: the
    relations of ``objective`` (``"attack_down"``: synonyms; ``"fix_up"``: synonyms and antonyms)."""
    generator = torch.Generator().manual_seed(seed)
    banned = set(exclude)
    order = [int(i) for i in torch.randperm(len(train), generator=generator) if int(i) not in banned]
    order = order[:3 * count + 20]  # enough rows with a synonym, without a WordNet pass over the whole set
    stub = datasets.Dataset.from_dict({"source_train_index": order,
                                       "query_index": [j % num_queries for j in range(len(order))],
                                       "objective": [objective] * len(order)})
    edits = random_baseline(stub, train, seed=seed, max_candidates=max_candidates, tokenizer=tokenizer,
                            max_length=max_length)
    return edits.select(range(min(count, len(edits))))


def loss_candidates(explainer, queries: datasets.Dataset, top: int) -> tuple[torch.Tensor, list[list[int]]]:
    """The loss attack's s_test and candidate rows: for each query, s_test of m = -L(z_test, y)
    (``(Q, P)``) and the ``top`` training rows (dataset rows) of largest -I(z, L) under the
    explainer's ranking. Cost: Q loss gradients and one solve of Q rows."""
    from hf_pairdots.influence import rank_scores
    from hf_pairdots.measurement import LossMeasurement, measurement_gradients
    from hf_pairdots.text import EncodedText

    rows = []
    for text, label in zip(queries["text"], queries["label"]):
        encoded = EncodedText.encode(explainer.tokenizer, text, explainer.args.max_length)
        rows.append(-measurement_gradients(explainer.objective, encoded, [LossMeasurement(int(label))])[0])
    solved = explainer.solve(torch.stack(rows))
    ranked = rank_scores(solved.scores, explainer.args.ranking, explainer.train_gradient_norms)
    order = ranked.argsort(dim=1, descending=True)[:, :top]
    return solved.x, [[explainer.train_rows[j] for j in row.tolist()] for row in order]


def loss_edits(explainer, train: datasets.Dataset, queries: datasets.Dataset, ks, *, num_sampled: int,
               max_candidates: int, seed: int = 0) -> dict[int, datasets.Dataset]:
    """The loss-chosen edits per budget k: per query in order, its candidates (:func:`loss_candidates`,
    2 x max k + 3 of them) searched lazily (:func:`~hf_pairdots.augment.search.search_edit`
    with the loss s_test, goal :data:`LOSS_GOAL`) until k edits, a row replaced at most once in
    the collection (the rule of the saliency attack). Cost: one solve plus, per search, at most
    1 + ``num_sampled`` Eq. 7 batches; searches are shared between budgets."""
    x, candidates = loss_candidates(explainer, queries, 2 * max(ks) + 3)
    texts, labels = train["text"], train["label"]
    searched: dict[tuple[int, int], object] = {}

    def edit_of(q: int, index: int):
        if (q, index) not in searched:
            result = search_edit(explainer.objective, explainer.tokenizer, explainer.lexicon, texts[index],
                                 int(labels[index]), x[q], LOSS_GOAL, num_sampled=num_sampled,
                                 max_candidates=max_candidates, generator=torch.Generator().manual_seed(seed),
                                 max_length=explainer.args.max_length)
            searched[(q, index)] = result.edit.to_proposed(LOSS_GOAL) if result.edit is not None else None
        return searched[(q, index)]

    out = {}
    for k in sorted(ks):
        used, proposals = set(), []
        for q, rows in enumerate(candidates):
            taken = 0
            for index in rows:
                if taken == k:
                    break
                if index in used or edit_of(q, index) is None:
                    continue
                used.add(index)
                taken += 1
                proposals.append((index, q, LOSS_GOAL, searched[(q, index)]))
        out[k] = edits_from_proposals(train, proposals, seed=seed)
    return out


# --------------------------------------------------------------------------- the run

def load_data(a):
    """``(train subsample, test sample, label names)``."""
    from hf_pairdots.data import load_text_classification, subsample

    data = load_text_classification(a.data)
    train = subsample(data["train"], a.train_size, a.seed)
    test = data["test"].shuffle(seed=0)
    test = test.select(range(min(a.test_size, len(test))))
    return train, test, data["train"].features["label"].names


def base_model(a, train, names, tokenizer, run: Path):
    """The fine-tuned model (kept under ``<run>/model`` and reused by a rerun)."""
    from hf_pairdots.models import load_classifier
    from hf_pairdots.training import train_classifier

    folder = run / "model"
    if (folder / "config.json").is_file():
        return load_classifier(str(folder))
    torch.manual_seed(a.seed)
    model = train_classifier(load_classifier(None, label_names=names), tokenizer, train, epochs=a.epochs,
                             learning_rate=a.lr, max_length=a.max_length, seed=a.seed, show_progress=False)
    model.save_pretrained(folder)
    return model


def predictions(model, tokenizer, texts, max_length: int) -> list[int]:
    from hf_pairdots.modeling import predict_proba

    return predict_proba(model, tokenizer, [t if t.strip() else "." for t in texts],
                         max_length=max_length).argmax(-1).tolist()


def split_queries(model, tokenizer, test, a):
    """``(targeted, untouched)``: the first ``--queries`` correctly classified test rows, the rest."""
    correct = [p == y for p, y in zip(predictions(model, tokenizer, test["text"], a.max_length), test["label"])]
    chosen = [i for i, ok in enumerate(correct) if ok][:a.queries]
    others = [i for i in range(len(test)) if i not in set(chosen)]
    return test.select(chosen), test.select(others)


def influence_edits(a, model, tokenizer, train, targeted, run: Path):
    """The saliency attack's explanations (resumable under ``<run>/explain``) and the loss
    attack's edits per k (``<run>/loss_edits``); ``(explanations, {k: loss edits}, seconds)``."""
    from hf_pairdots.explain import Explainer

    config = {"params": "head", "saliency_mode": a.saliency_mode, "solver": "lissa", "depth": a.depth, "num_sampled": a.num_sampled,
              "max_candidates": a.max_candidates, "num_queries": len(targeted), "max_length": a.max_length,
              "seeds": [0], "top_k": None}
    seconds = {}
    start = time.perf_counter()
    made = common.explain_with_edits(config, model, tokenizer, train, targeted, run / "explain", selection="all",
                                     objective=OBJECTIVE, per_query=max(a.ks))
    seconds["explain_saliency"] = round(time.perf_counter() - start, 1)
    folder = run / "loss_edits"
    if not all((folder / f"k{k}").is_dir() for k in a.ks):
        start = time.perf_counter()
        explainer = Explainer(model, tokenizer, train["text"], train["label"], made.args)
        for k, edits in loss_edits(explainer, train, targeted, a.ks, num_sampled=a.num_sampled,
                                   max_candidates=a.max_candidates).items():
            edits.save_to_disk(str(folder / f"k{k}"))
        seconds["explain_loss"] = round(time.perf_counter() - start, 1)
    loss = {k: datasets.load_from_disk(str(folder / f"k{k}")) for k in a.ks}
    return made, loss, seconds


def training_sets(a, made, loss, train, tokenizer, seed: int, k: int) -> dict[str, tuple[datasets.Dataset, int, float]]:
    """``{method: (training set, edits, distinct rows per query)}`` at budget k for one seed."""
    from hf_pairdots.augment.dataset import apply_edits
    from hf_pairdots.pipeline import apply_explanations

    q = len(made.explanations)
    collection, edited = apply_explanations(made.explanations, train, OBJECTIVE, per_query=k, seed=0)
    edits = collection.dataset
    rows = edits["source_train_index"]
    influence_rows = set(rows) | set(loss[max(a.ks)]["source_train_index"])
    same = random_baseline(edits, train, seed=seed, max_candidates=a.max_candidates, tokenizer=tokenizer,
                           max_length=a.max_length)
    others = random_row_edits(train, len(edits), influence_rows, seed=seed, tokenizer=tokenizer,
                              max_length=a.max_length, max_candidates=a.max_candidates, num_queries=q)
    spread = distinct_rows_per_query(edits, q)
    return {
        "saliency": (edited, len(edits), spread),
        "random_same": (apply_edits(train, same, mode="replace"), len(same), distinct_rows_per_query(same, q)),
        "random_rows": (apply_edits(train, others, mode="replace"), len(others), distinct_rows_per_query(others, q)),
        "remove": (removed(train, rows), len(rows), spread),
        "relabel": (relabelled(train, rows), len(rows), spread),
        "loss": (apply_edits(train, loss[k], mode="replace"), len(loss[k]), distinct_rows_per_query(loss[k], q)),
    }


def job_key(protocol: str, method: str, k: int, seed: int) -> str:
    return f"{protocol}_{method}_k{k}_seed{seed}"


def run_job(context, protocol, data, targeted, untouched, a) -> dict:
    """Retrain one training set (:func:`hf_pairdots.verify.retrain`) and score it."""
    from hf_pairdots.verify import retrain

    start = time.perf_counter()
    model = retrain(context, protocol, data, full_size=len(context.train))
    hit = flips(predictions(model, context.tokenizer, targeted["text"], a.max_length), targeted["label"])
    rest = predictions(model, context.tokenizer, untouched["text"], a.max_length)
    collateral = sum(int(p == y) for p, y in zip(rest, untouched["label"])) / len(untouched)
    return {"flips": hit, "targeted_accuracy": 1 - sum(hit) / len(hit), "collateral_accuracy": collateral,
            "train_rows": len(data), "seconds": round(time.perf_counter() - start, 1)}


def job_contexts(a, model, tokenizer, train, explain_args):
    """``(protocol, seed, JobContext)`` of every retraining run of ``--protocol`` and ``--seeds``
    (``--initial-seeds`` of them for the dearer initial protocol, which retrains every parameter)."""
    from hf_pairdots.models import PACKAGED_MINILM
    from hf_pairdots.verify import JobContext, VerifyArguments

    protocols = ("warm", "initial") if a.protocol == "both" else (a.protocol,)
    for protocol in protocols:
        for seed in (a.seeds if protocol == "warm" else a.seeds[:a.initial_seeds]):
            args = VerifyArguments(protocol=protocol, init_model=PACKAGED_MINILM, epochs=a.epochs,
                                   learning_rate=a.lr, warm_epochs=a.warm_epochs, warm_learning_rate=a.warm_lr,
                                   seed=seed, retrain_params=a.retrain_params if protocol == "warm" else "all",
                                   num_threads=a.threads)
            yield protocol, seed, JobContext(model=model, init_model=PACKAGED_MINILM, tokenizer=tokenizer, train=train,
                                             rows=[], explain_args=explain_args, args=args)


def measure(a) -> dict:
    from hf_pairdots.augment.lexicon import ensure_wordnet
    from hf_pairdots.models import load_tokenizer

    ensure_wordnet()
    run = Path(a.run_dir)
    (run / "jobs").mkdir(parents=True, exist_ok=True)
    train, test, names = load_data(a)
    tokenizer = load_tokenizer()
    start = time.perf_counter()
    model = base_model(a, train, names, tokenizer, run)
    seconds = {"train": round(time.perf_counter() - start, 1)}
    targeted, untouched = split_queries(model, tokenizer, test, a)
    made, loss, explain_seconds = influence_edits(a, model, tokenizer, train, targeted, run)
    seconds.update(explain_seconds)
    for protocol, seed, context in job_contexts(a, model, tokenizer, train, made.args):
        todo = [("unedited", 0, (train, 0, 0.0))]
        for k in a.ks:
            todo += [(m, k, s) for m, s in training_sets(a, made, loss, train, tokenizer, seed, k).items()]
        for method, k, (data, n_edits, spread) in todo:
            path = run / "jobs" / f"{job_key(protocol, method, k, seed)}.json"
            if path.is_file():
                continue
            result = run_job(context, protocol, data, targeted, untouched, a)
            result.update({"protocol": protocol, "method": method, "k": k, "seed": seed, "edits": n_edits,
                           "rows_per_query": spread})
            atomic_write_text(path, json.dumps(result))
            print(f"[bench_attack] {path.stem}: targeted {result['targeted_accuracy']:.3f}, collateral "
                  f"{result['collateral_accuracy']:.3f}, {n_edits} edits, {result['seconds']} s", flush=True)
    jobs = [json.loads(p.read_text()) for p in sorted((run / "jobs").glob("*.json"))]
    return {"train_size": len(train), "queries": len(targeted), "untouched": len(untouched), "seconds": seconds,
            "jobs": jobs}


# --------------------------------------------------------------------------- tables

def summarise(jobs: list[dict]) -> dict[tuple[str, str, int], dict]:
    """Per (protocol, method, k): seeds, mean/std of targeted and collateral accuracy, pooled
    flips / trials with the Wilson interval, mean edits, rows per query and job seconds."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for job in jobs:
        groups.setdefault((job["protocol"], job["method"], job["k"]), []).append(job)
    out = {}
    for key, items in groups.items():
        hits = [h for job in items for h in job["flips"]]

        def spread(name):
            values = [job[name] for job in items]
            return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        out[key] = {"seeds": len(items), "targeted": spread("targeted_accuracy"),
                    "collateral": spread("collateral_accuracy"), "flips": sum(hits), "trials": len(hits),
                    "wilson": wilson(sum(hits), len(hits)), "edits": statistics.fmean(j["edits"] for j in items),
                    "rows_per_query": statistics.fmean(j["rows_per_query"] for j in items),
                    "seconds": statistics.fmean(j["seconds"] for j in items)}
    return out


def table(result: dict, a) -> str:
    summary = summarise(result["jobs"])
    s = result["seconds"]
    lines = [BEGIN, "## Training-set attack against baselines (bench_attack)", "",
             f"`python benchmarks/bench_attack.py {' '.join(a.argv)}` ({a.threads} torch thread(s), 2 shared CPU cores): "
             f"MiniLM-L6 fine-tuned on {result['train_size']} SST-2 sentences ({a.epochs:g} epochs at lr {a.lr:g}); "
             f"{result['queries']} targeted test sentences (correct before), {result['untouched']} untouched ones. "
             f"Warm protocol: {a.warm_epochs:g} epoch(s) from the trained weights at lr {a.warm_lr:g}, "
             f"retraining {a.retrain_params} parameters; initial protocol: the full recipe from the packaged MiniLM. "
             f"Saliency attack edits chosen with saliency_mode={a.saliency_mode}. "
             f"Seconds: training {s.get('train')}, saliency explanations {s.get('explain_saliency')}, "
             f"loss edits {s.get('explain_loss', '(cached)')}.", "",
             "Flip: a targeted query misclassified after retraining; pooled over seeds x queries, 95 % Wilson "
             "interval. Accuracies: mean ± std over seeds, in %. Edits: training rows changed in all (per query: "
             "distinct rows per targeted query).", "",
             "| protocol | method | k | seeds | flip rate [95 % CI] | targeted acc. | collateral acc. | edits "
             "(per query) | s / job |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {m: i for i, m in enumerate(("unedited", *METHODS))}
    for (protocol, method, k), n in sorted(summary.items(), key=lambda kv: (kv[0][0] != "warm", kv[0][2],
                                                                             order[kv[0][1]])):
        lo, hi = n["wilson"]
        lines.append(f"| {protocol} | {TITLES[method]} | {k} | {n['seeds']} | {n['flips']}/{n['trials']} = "
                     f"{100 * n['flips'] / n['trials']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                     f"{100 * n['targeted'][0]:.1f} ± {100 * n['targeted'][1]:.1f} | "
                     f"{100 * n['collateral'][0]:.1f} ± {100 * n['collateral'][1]:.1f} | "
                     f"{n['edits']:.0f} ({n['rows_per_query']:.2f}) | {n['seconds']:.0f} |")
    lines += ["", "Targets (issue 15): at k ≤ 6, targeted accuracy ≥ 10 points below the random-edit baseline of "
              "the same budget, beyond the seed spread; collateral within 1 point of the unedited model.", END]
    return "\n".join(lines)


def retraining_arguments(p: argparse.ArgumentParser, *, ks, run_dir: str) -> argparse.ArgumentParser:
    """The options bench_attack and bench_fix share: data, base model, budgets, seeds, retraining
    protocols, the edit search and the run folder (``--ks`` defaults to ``ks``)."""
    p.add_argument("--data", default=str(BENCH.parents[1] / "shared" / "data" / "sst_sentence"))
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--ks", type=int, nargs="+", default=list(ks))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocol", default="warm", choices=["warm", "initial", "both"])
    p.add_argument("--initial-seeds", type=int, default=1, help="seeds of the initial protocol (its jobs are dearer)")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warm-epochs", type=float, default=1)
    p.add_argument("--warm-lr", type=float, default=5e-5)
    p.add_argument("--retrain-params", default="explained", choices=["all", "explained"])
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--num-sampled", type=int, default=3)
    p.add_argument("--max-candidates", type=int, default=8)
    p.add_argument("--saliency-mode", default="occlusion",
                   help="ExplainArguments.saliency_mode of the influence-chosen edits (the paper's: gradient)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="subsample and base-training seed")
    p.add_argument("--run-dir", default=run_dir)
    p.add_argument("--out", default=None, help="Markdown file to put the table in (default: print only)")
    return p


def run_benchmark(p: argparse.ArgumentParser, argv, measure, table, begin: str, end: str) -> int:
    """Parse, measure, print the table, keep ``<run-dir>/result.json`` and write the section of ``--out``."""
    a = p.parse_args(argv)
    a.argv = argv if argv is not None else sys.argv[1:]
    torch.set_num_threads(a.threads)
    result = measure(a)
    text = table(result, a)
    print(text)
    atomic_write_text(Path(a.run_dir) / "result.json", json.dumps(result, indent=2) + "\n")
    if a.out:
        write_section(a.out, text, begin, end)
    return 0


def main(argv=None) -> int:
    p = retraining_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), ks=[1, 2, 6],
                             run_dir="runs/bench_attack")
    return run_benchmark(p, argv, measure, table, BEGIN, END)


if __name__ == "__main__":
    raise SystemExit(main())
