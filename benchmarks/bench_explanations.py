"""Are the explanations plausible, and do the same few training sentences explain everything?

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_explanations.py \
        --json /tmp/bench_explanations.json --out benchmarks/RESULTS.md

SST-2 sentences (``../shared/data/sst_sentence``), a seeded subsample of 2,000 training
sentences, the packaged MiniLM-L6 (classifier head seeded) fine-tuned on them for 2 epochs
(:func:`hf_pairdots.training.train_classifier`: the Accelerate loop of recipes/pair_the_dots.py's
retrains, same hyperparameters as its Trainer: AdamW 5e-5, batch 16, 6 % warmup, weight decay
0.01, max length 64). Explained rows: every dev misclassification (``select_queries`` with
``max_queries=None``) x its 2 labels (predicted, gold), as the Explainer explains them.

**Word polarity** comes from the SST treebank (``../shared/data/sst_trees``; every word is a
labelled leaf, 0-4). Each dev sentence is matched to its tree by its lower-cased words (all 872
match). A word is *polar for label y* when its leaf label is on y's side of neutral: 3 or 4
(positive, very positive) for "positive", 0 or 1 for "negative"; 2 is neutral. A leaf holding a
no-break space ("8\\xa01\\/2") gives its label to each of its whitespace words.

1. **Plausibility** (saliency only, no influence): for saliency_mode in {gradient, grad_x_input,
   l2} x salient_by in {value, magnitude} (target prob: see :data:`TARGETS`), the share of rows whose
   most salient word is polar for the explained label, against chance (a random word of the
   sentence: per row the share of its scored words that are polar for the label, averaged over
   rows, i.e. the exact expectation) and the ceiling (rows whose sentence holds any such word).
2. **Influence** for the paper's saliency, the default (occlusion) and the most plausible one of step 1, each with
   ``curvature`` "hessian" and "ggn" (Explainer at its defaults otherwise: params "head", solver
   auto = CG, top-5, Eq. 8 words, no edits):
   the share of top-5 training examples that contain the salient word or a WordNet synonym of it
   (:class:`hf_pairdots.augment.lexicon.Lexicon`; case-insensitive whole-word match, a multi-word
   synonym as a word sequence), hub concentration (the largest share of rows in whose top-5 one
   training example appears), distinct examples in the top-5 slots, and the cost of explaining
   (Explainer construction + every chunk of 8 queries; the dev prediction is made once before and
   not counted) in training epochs of this run (the 2-epoch training time / 2, same process).
   Also ``ranking="unit"`` (I(z_i, m) / ||∇θ L(z_i)||₂ over the same θ_S, TrackStar-style; the
   query side is one positive factor per row and cannot change a row's ranking), from the full
   score rows of :meth:`Explainer.solve` read back from its s_test cache and
   :func:`hf_pairdots.influence.gradient_norms` / :func:`~hf_pairdots.influence.rank_scores`
   (what the Explainer does with that option; tests/test_ranking.py checks the equality).

The fine-tuned model is trained once and kept under ``--cache`` (default /tmp/bench_cache), with
its training time, so that reruns only explain.

``--json`` keeps the numbers after each stage; ``--render JSON`` writes the section from such a
file without recomputing. The section replaces the text between the ``bench_explanations``
markers of ``--out`` (appended at the end when they are absent).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_pairdots.arguments import ExplainArguments, SolverOptions  # noqa: E402
from hf_pairdots.augment.lexicon import Lexicon, ensure_wordnet  # noqa: E402
from hf_pairdots.callback import select_queries  # noqa: E402
from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.explain import Explainer, predict_proba  # noqa: E402
from hf_pairdots.features import first_position_only  # noqa: E402
from hf_pairdots.influence import gradient_norms, influence_mode, rank_scores  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.measurement import SaliencyMeasurement, measurement_gradients  # noqa: E402
from hf_pairdots.saliency import MODES, saliency  # noqa: E402
from hf_pairdots.text import EncodedText  # noqa: E402
from hf_pairdots.training import train_classifier  # noqa: E402
from results_md import write_section  # noqa: E402

SHARED = Path(os.environ.get("PAIRDOTS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
"""The project's offline data sets: ``shared/data`` beside the repository (``PAIRDOTS_SHARED_DATA`` overrides)."""
BEGIN, END = "<!-- bench_explanations:begin -->", "<!-- bench_explanations:end -->"
LEAF = re.compile(r"\((\d) ([^()]+)\)")
TARGETS = ("prob",)
"""For two labels the logit margin and the log-probability have gradients that are the
probability's times one positive number per example (1 / (p(1 - p)) and 1 / p), so every word
ranking, signed or by magnitude, is the same: the grid leaves them out."""
SALIENT_BY = ("value", "magnitude")
DEFAULT = ("occlusion", "value", "prob")
"""ExplainArguments' saliency defaults (chosen by this benchmark: docs/explanations.md)."""
PAPER = ("gradient", "value", "prob")
"""The paper's saliency (Sec. 3.1), the default before this benchmark chose occlusion."""
POSITIVE = 1  # SST-2 label ids: 0 negative, 1 positive


# ------------------------------------------------------------------------------------------
# Treebank word polarity
# ------------------------------------------------------------------------------------------

def treebank_leaf_labels() -> dict[str, list[int]]:
    """{lower-cased sentence (words joined by one space): leaf label 0-4 of each word}, dev and train trees."""
    out = {}
    for stem in ("dev", "train"):
        for tree in (SHARED / "sst_trees" / f"{stem}.txt").read_text(encoding="utf-8").splitlines():
            pairs = [(w, int(label)) for label, leaf in LEAF.findall(tree) for w in leaf.split()]
            out.setdefault(" ".join(w.lower() for w, _ in pairs), [label for _, label in pairs])
    return out


def polar(leaf_label: int, label: int) -> bool:
    """The word leans to ``label``'s side: leaf 3-4 for positive, 0-1 for negative (2 = neutral)."""
    return leaf_label >= 3 if label == POSITIVE else leaf_label <= 1


def sentence_leaves(index: dict[str, list[int]], text: str) -> list[int]:
    words = text.split()
    leaves = index.get(" ".join(w.lower() for w in words))
    if leaves is None or len(leaves) != len(words):
        raise ValueError(f"no treebank sentence with the words of {text!r}")
    return leaves


# ------------------------------------------------------------------------------------------
# Step 1: plausibility of the saliency configurations
# ------------------------------------------------------------------------------------------

def explained_rows(queries, probs) -> list[dict]:
    """One row per (query, label), predicted label first then gold, as the Explainer orders them."""
    rows = []
    for q in queries:
        predicted = int(probs[q.index].argmax())
        for role, label in (("predicted", predicted), ("gold", q.gold)):
            if role == "gold" and label == predicted:
                continue
            rows.append({"query": q.index, "text": q.text, "label": label, "role": role})
    return rows


def plausibility(model, tok, rows: list[dict], leaves: dict[int, list[int]], max_length: int,
                 batch: int = 32) -> list[dict]:
    """Step 1 for every configuration: a list of result dicts (one per mode x salient_by x target)."""
    out = []
    for mode in MODES:
        for target in TARGETS:
            maps = []
            for s in range(0, len(rows), batch):
                chunk = rows[s:s + batch]
                maps += saliency(model, tok, [r["text"] for r in chunk], [r["label"] for r in chunk],
                                 mode=mode, target=target, max_length=max_length)
            for by in SALIENT_BY:
                picked = [m.rank(by)[0] for m in maps]
                out.append(score_config((mode, by, target), rows, maps, picked, leaves))
    return out


def score_config(config, rows, maps, picked, leaves) -> dict:
    hits, chance, ceiling, words = [], [], [], collections.Counter()
    for row, sal, word in zip(rows, maps, picked):
        labels = leaves[row["query"]]
        scored = [i for i, s in enumerate(sal.scores) if s is not None]
        is_polar = [polar(labels[i], row["label"]) for i in scored]
        hits.append(polar(labels[word], row["label"]))
        chance.append(sum(is_polar) / len(scored))
        ceiling.append(any(is_polar))
        words[sal.words[word].lower()] += 1
    by_role = {role: mean([h for h, r in zip(hits, rows) if r["role"] == role]) for role in ("predicted", "gold")}
    return {"config": list(config), "rows": len(rows), "polar": mean(hits), "polar_gold": by_role["gold"],
            "polar_predicted": by_role["predicted"], "chance": mean(chance), "ceiling": mean(ceiling),
            "top_words": words.most_common(6), "salient_words": picked}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------
# Step 2: influence for the paper's saliency, the default and the most plausible configuration
# ------------------------------------------------------------------------------------------

def explain_config(model, tok, train, queries, config, curvature: str, max_length: int, top_k: int,
                   cache_dir: Path, params: str = "head") -> dict:
    """Run the Explainer for one configuration; records, the Explainer, and its time."""
    mode, by, target = config
    args = ExplainArguments(max_queries=None, max_length=max_length, top_k=top_k, saliency_mode=mode, salient_by=by,
                            params=params,
                            saliency_target=target, ranking="raw",  # the unit ranking: from the full scores
                            solver=SolverOptions(cache_dir=str(cache_dir), curvature=curvature))
    start = time.perf_counter()
    explainer = Explainer(model, tok, train["text"], train["label"], args)
    records = []
    for begin in range(0, len(queries), 8):
        records += [record.to_dict() for record in explainer.explain(queries[begin:begin + 8])]
    return {"explainer": explainer, "records": records, "seconds": time.perf_counter() - start}


def full_scores(explainer: Explainer, records: list[dict]):
    """``(rows, n)`` Eq. 5 scores of every explained row, from :meth:`Explainer.solve` (the rows'
    ∇θ m built as the Explainer builds them, so its s_test cache answers), and how many were cached."""
    a, grads = explainer.args, []
    with first_position_only(explainer.model):
        for rec in records:
            encoded = EncodedText.encode(explainer.tokenizer, rec["text"], a.max_length)
            measurements = [SaliencyMeasurement(
                e["label"], e["salient_word"], a.saliency_mode, a.saliency_target,
                -1.0 if a.salient_by == "magnitude" and e["saliency"][e["salient_word"]] < 0 else 1.0, a.eraser)
                for e in rec["labels"]]
            grads.append(measurement_gradients(explainer.objective, encoded, measurements))
    solved = explainer.solve(torch.cat(grads))
    return solved.scores, sum(solved.cached)


class SynonymMatcher:
    """Does a training text contain a word or one of its WordNet synonyms (whole words, any case)?"""

    def __init__(self):
        self.lexicon, self.cache, self.shares = Lexicon(), {}, {}

    def forms(self, word: str) -> list[tuple[str, ...]]:
        key = word.lower()
        if key not in self.cache:
            self.cache[key] = [(key,)] + [tuple(s.lower().split()) for s in self.lexicon.synonyms(key)]
        return self.cache[key]

    def contains(self, word: str, text: str, synonyms: bool = True) -> bool:
        words = [w.lower() for w in text.split()]
        for form in self.forms(word) if synonyms else [(word.lower(),)]:
            n = len(form)
            if any(tuple(words[i:i + n]) == form for i in range(len(words) - n + 1)):
                return True
        return False

    def share(self, word: str, texts: list[str]) -> float:
        """Share of ``texts`` containing ``word`` or a synonym: the chance that a random training
        example does (``texts`` is the same training set on every call)."""
        key = word.lower()
        if key not in self.shares:
            self.shares[key] = mean(self.contains(key, text) for text in texts)
        return self.shares[key]


def influence_metrics(rows: list[dict], train_texts: list[str], matcher: SynonymMatcher, leaves, k: int) -> dict:
    """Rows: ``{"words", "salient", "label", "top"}`` (top: training indices, best first)."""
    slots = [(row, j) for row in rows for j in row["top"][:k]]
    appearances = collections.Counter(j for row in rows for j in set(row["top"][:k]))
    hub, count = appearances.most_common(1)[0]
    word = lambda row: row["words"][row["salient"]]  # noqa: E731
    return {
        "rows": len(rows),
        "polar": mean(polar(leaves[row["query"]][row["salient"]], row["label"]) for row in rows),
        "top_k_contains_word_or_synonym": mean(matcher.contains(word(r), train_texts[j]) for r, j in slots),
        "top_k_contains_word": mean(matcher.contains(word(r), train_texts[j], synonyms=False) for r, j in slots),
        "random_contains_word_or_synonym": mean(matcher.share(word(r), train_texts) for r in rows),
        "hub_share": count / len(rows), "hub_text": train_texts[hub], "hub_index": hub,
        "distinct_in_top_k": len(appearances), "slots": len(slots),
        "examples_over_10pct": sum(c > 0.1 * len(rows) for c in appearances.values()),
    }


def influence_step(model, tok, train, queries, config, curvature, a, leaves, matcher, epoch: float,
                   tmp: Path) -> dict:
    ran = explain_config(model, tok, train, queries, config, curvature, a.max_length, a.top_k,
                         tmp / "_".join((*config, curvature)), a.params)
    explainer, records = ran["explainer"], ran["records"]
    base = [{"query": rec["query_index"], "words": rec["words"], "salient": e["salient_word"], "label": e["label"],
             "top": [t["train_index"] for t in e["top_train"]],
             "responsible": [t["words"][t["responsible_word"]] for t in e["top_train"]]}
            for rec in records for e in rec["labels"]]
    texts = list(train["text"])
    raw = influence_metrics(base, texts, matcher, leaves, a.top_k)
    word = lambda row: row["words"][row["salient"]]  # noqa: E731
    raw["responsible_is_word_or_synonym"] = mean(matcher.contains(word(r), w) for r in base for w in r["responsible"])
    out = {"config": list(config), "curvature": curvature, "params": a.params, "explain_seconds": ran["seconds"], "explain_epochs": ran["seconds"] / epoch,
           "solver": records[0]["diagnostics"].get("solver"), "damping": records[0]["diagnostics"].get("damping"),
           "raw": raw}
    if not a.skip_normalised:
        scores, cached = full_scores(explainer, records)
        rows_of = torch.as_tensor(explainer.train_rows)
        raw_top = [rows_of[torch.topk(scores[r], a.top_k).indices].tolist() for r in range(len(base))]
        start = time.perf_counter()
        norms = gradient_norms(explainer.objective, explainer.data)
        out["norms_seconds"] = time.perf_counter() - start
        ranked = rank_scores(scores, "unit", norms)
        normed_top = [rows_of[torch.topk(ranked[r], a.top_k).indices].tolist() for r in range(len(base))]
        out["normalised"] = influence_metrics([{**row, "top": top} for row, top in zip(base, normed_top)],
                                              texts, matcher, leaves, a.top_k)
        out["full_scores_cached_rows"] = cached
        out["raw_top_k_equal_records"] = mean(t == row["top"] for t, row in zip(raw_top, base))
        out["gradient_norm_range"] = [float(norms.min()), float(norms.median()), float(norms.max())]
    out["peak_rss_mb_after"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------

def checkpoint(a, out: dict) -> None:
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


def trained_model(a, tok, train, names):
    """The fine-tuned model and its training time, trained once and kept under ``--cache``
    (``model/`` + ``train.json``, keyed by train size, epochs, max length and seed)."""
    folder = Path(a.cache) / f"minilm_n{a.train_size}_e{a.epochs:g}_L{a.max_length}_s{a.seed}"
    if (folder / "train.json").exists():
        meta = json.loads((folder / "train.json").read_text())
        return load_classifier(str(folder / "model"), label_names=names).eval(), meta["train_seconds"]
    torch.manual_seed(a.seed)
    model = load_classifier(None, label_names=names)
    start = time.perf_counter()
    model = train_classifier(model, tok, train, epochs=a.epochs, max_length=a.max_length, seed=a.seed,
                             show_progress=False)
    train_seconds = time.perf_counter() - start
    model.save_pretrained(folder / "model")
    (folder / "train.json").write_text(json.dumps({"train_seconds": train_seconds}) + "\n")
    return model, train_seconds


def measure(a) -> dict:
    ensure_wordnet()
    data = load_text_classification(str(SHARED / "sst_sentence"))
    names = data["train"].features["label"].names
    train, dev = subsample(data["train"], a.train_size, a.seed), data["validation"]
    index = treebank_leaf_labels()
    tok = load_tokenizer()
    model, train_seconds = trained_model(a, tok, train, names)
    epoch = train_seconds / a.epochs
    if a.train_only:
        return {"train_seconds": train_seconds}
    out = {"train_size": len(train), "epochs": a.epochs, "train_seconds": train_seconds, "epoch_seconds": epoch,
           "threads": torch.get_num_threads(), "max_length": a.max_length, "top_k": a.top_k}
    checkpoint(a, out)
    with influence_mode(model) as m:
        probs = predict_proba(m, tok, list(dev["text"]), max_length=a.max_length)
        out["dev_accuracy"] = float((probs.argmax(-1) == torch.as_tensor(dev["label"])).float().mean())
        queries, _ = select_queries(list(dev["text"]), list(dev["label"]), probs,
                                    ExplainArguments(max_queries=a.max_errors, max_length=a.max_length))
        out["dev_errors"] = int((probs.argmax(-1) != torch.as_tensor(dev["label"])).sum())
        out["explained_queries"] = len(queries)
        leaves = {q.index: sentence_leaves(index, q.text) for q in queries}
        if a.configs:  # the influence step for these only (the grid of step 1 is left out)
            configs = [tuple(c.split("/")) for c in a.configs]
        else:
            rows = explained_rows(queries, probs)
            start = time.perf_counter()
            grid = plausibility(m, tok, rows, leaves, a.max_length)
            out["saliency_seconds"] = time.perf_counter() - start
            out["plausibility"] = [{k: v for k, v in g.items() if k != "salient_words"} for g in grid]
            checkpoint(a, out)
            best = max(grid, key=lambda g: g["polar"])  # first of the grid on ties (the paper's is first)
            configs = list(dict.fromkeys([PAPER, DEFAULT, tuple(best["config"])]))  # in order, without repeats
        matcher = SynonymMatcher()
        tmp = Path(tempfile.mkdtemp(prefix="bench_explanations_"))
        out["influence"] = []
        try:
            for config in configs:
                for curvature in a.curvatures:
                    out["influence"].append(influence_step(m, tok, train, queries, config, curvature, a, leaves,
                                                           matcher, epoch, tmp))
                    checkpoint(a, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    checkpoint(a, out)
    return out


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def name(config) -> str:
    mode, by, target = config
    tag = {DEFAULT: " (default)", PAPER: " (paper)"}.get(tuple(config), "")
    return f"{mode} / {by} / {target}{tag}"


def table(r: dict, command: str) -> str:
    lines = [BEGIN, "## Explanations: plausibility and hubs", "",
             f"Command: `{command}`; SST-2 sentences, {r['train_size']:,} training sentences (subsample seed 0), "
             f"packaged MiniLM-L6 fine-tuned {r['epochs']:g} epochs with `train_classifier` (training "
             f"{r['train_seconds']:.0f} s, one epoch = {r['epoch_seconds']:.0f} s in this run; dev accuracy "
             f"{r['dev_accuracy']:.4f}), max length {r['max_length']}, {r['threads']} torch thread(s), niced, on a "
             "shared machine, one run.", ""]
    if "plausibility" not in r:
        return "\n".join(lines + ["(stopped before the saliency step)", END])
    grid = r["plausibility"]
    first = grid[0]
    lines += [f"Explained: {r['explained_queries']} dev errors of {r['dev_errors']} x 2 labels = {first['rows']} rows. "
              "Polar = the most salient word's treebank leaf label is 3-4 for a positive row, 0-1 for a negative "
              "row. Chance = a random word of the sentence (exact mean over its words). Ceiling = the sentence has "
              f"some word polar for the label ({pct(first['ceiling'])} of rows). Saliency for the whole grid took "
              f"{r['saliency_seconds']:.0f} s.", "",
              "| saliency_mode / salient_by / target | polar, all rows | gold rows | predicted rows | chance "
              "| x chance | most frequent salient words |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in sorted(grid, key=lambda g: -g["polar"]):
        words = ", ".join(f"`{w}` {c}" for w, c in g["top_words"][:5])
        lines.append(f"| {name(g['config'])} | {pct(g['polar'])} | {pct(g['polar_gold'])} | "
                     f"{pct(g['polar_predicted'])} | {pct(g['chance'])} | {g['polar'] / g['chance']:.2f} | {words} |")
    if r.get("influence"):
        lines += ["", "Influence (Explainer defaults apart from the saliency, curvature and ranking of each row: "
                  "params and curvature as in each row, solver "
                  f"{r['influence'][0]['solver']} (kfac / ekfac: closed form), top-{r['top_k']}, Eq. 8 words, no edits). Contains = a top-"
                  f"{r['top_k']} training example holds the salient word (or a WordNet synonym); hub = largest "
                  f"share of rows in whose top-{r['top_k']} one training example appears; chance = the share of all "
                  "training examples that contain the row's salient word or a synonym, averaged over rows; cost = Explainer "
                  "construction + explaining every row, in training epochs of this run.", "",
                  "| configuration | params / curvature (damping) | ranking | polar | contains word or synonym | chance (random example) "
                  "| contains word | hub share "
                  "| examples in > 10 % of rows | distinct / slots | Eq. 8 responsible word = salient or synonym "
                  "| explain s | epochs | peak RSS after (MB) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for inf in r["influence"]:
            lines.append(influence_line(inf, "raw", f"{inf['explain_seconds']:.0f}", f"{inf['explain_epochs']:.2f}"))
            if "normalised" in inf:
                extra = inf["norms_seconds"]
                lines.append(influence_line(inf, "normalised", f"+ {extra:.0f} (gradient norms)",
                                            f"+ {extra / r['epoch_seconds']:.2f}"))
        lines += [""]
        for inf in r["influence"]:
            x = inf["raw"]
            note = f"- {name(inf['config'])}, {inf.get('curvature', 'hessian')}: damping {inf['damping']:.3g}; raw hub (train row {x['hub_index']}): " \
                   f"\"{x['hub_text'][:100]}\""
            if "normalised" in inf:
                y = inf["normalised"]
                note += (f"; normalised hub (row {y['hub_index']}): \"{y['hub_text'][:100]}\"; full score rows read "
                         f"from the s_test cache: {inf['full_scores_cached_rows']} of {x['rows']}, their top-"
                         f"{r['top_k']} equal to the records' in {pct(inf['raw_top_k_equal_records'])} of rows; "
                         "‖∇L(z)‖ min / median / max " + " / ".join(f"{v:.3g}" for v in inf["gradient_norm_range"]))
            lines.append(note + ".")
    lines.append(f"\nPeak RSS of the run: {r['peak_rss_mb']:.0f} MB." if "peak_rss_mb" in r else "")
    return "\n".join(lines + [END])


def influence_line(inf: dict, ranking: str, seconds: str, epochs: str) -> str:
    x = inf[ranking]
    curvature = f"{inf.get('params', 'head')} / {inf.get('curvature', 'hessian')} ({inf['damping']:.3g})"
    return (f"| {name(inf['config'])} | {curvature} | {'raw: Eq. 5' if ranking == 'raw' else 'unit: Eq. 5 / ‖∇L(z)‖'} "
            f"| {pct(x['polar'])} | "
            f"{pct(x['top_k_contains_word_or_synonym'])} | {pct(x.get('random_contains_word_or_synonym'))} | "
            f"{pct(x['top_k_contains_word'])} | {pct(x['hub_share'])} | "
            f"{x['examples_over_10pct']} | {x['distinct_in_top_k']} / {x['slots']} | "
            f"{pct(x.get('responsible_is_word_or_synonym'))} | {seconds} | {epochs} | "
            f"{inf.get('peak_rss_mb_after', float('nan')):.0f} |")


def merged(runs: list[dict]) -> dict:
    """The first run, with the influence rows of every run (runs of the same model and queries)."""
    out = dict(runs[0], influence=[inf for r in runs for inf in r.get("influence", [])])
    peaks = [r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r]
    if peaks:
        out["peak_rss_mb"] = max(peaks)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-errors", type=int, default=None, help="explain only the first this many dev errors")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curvatures", nargs="+", default=["hessian", "ggn"], help="SolverOptions.curvature values")
    p.add_argument("--params", default="head", help="ExplainArguments.params of the influence step (e.g. linear "
                                                     "with --curvatures kfac ekfac)")
    p.add_argument("--configs", nargs="*", default=[],
                   help="mode/salient_by/target configurations for the influence step only (no grid)")
    p.add_argument("--skip-normalised", action="store_true", help="leave out the unit-normalised ranking")
    p.add_argument("--cache", default="/tmp/bench_cache", help="folder of the trained model (trained once)")
    p.add_argument("--train-only", action="store_true", help="train and cache the model, then stop")
    p.add_argument("--json", default=None, help="write the raw numbers here after each stage")
    p.add_argument("--render", nargs="+", default=None,
                   help="write the section from these JSON files instead of measuring (the first one's run and "
                        "grid; the influence rows of all, in order)")
    p.add_argument("--out", default=None, help="RESULTS.md to update")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    result = merged([json.loads(Path(f).read_text()) for f in a.render]) if a.render else measure(a)
    if a.train_only:
        return result
    command = ("nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_explanations.py "
               "--out benchmarks/RESULTS.md")
    text = table(result, command)
    print(text)
    if a.out:
        write_section(a.out, text, BEGIN, END)
    return result


if __name__ == "__main__":
    main()
