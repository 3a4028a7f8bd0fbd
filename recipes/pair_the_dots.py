"""The whole Pair-the-Dots loop on real data (paper Sec. 3-4), end to end.

1. load SST-2 (local ``../shared/data/sst_sentence`` when present, else the Hub's ``glue/sst2``)
   and the pretrained model (the packaged MiniLM-L6 by default);
2. fine-tune it with a ``transformers.Trainer`` on a seeded training subsample, with
   ``PairDotsCallback`` attached: at the end of training it explains the dev misclassifications
   (saliency for the wrong and the gold label; top-k training examples by Eq. 5, s_test by
   ``--solver``, default ``auto`` = conjugate gradient at 2,000 training examples; their
   responsible words by Eq. 8) and proposes a fixing edit of each of those examples
   (Sec. 4.3: ↑I(z, w_y) / ↓I(z, w_y') with WordNet synonyms and antonyms, Eq. 11-12);
3. collects up to ``--fix-per-query`` edits per query into a ``datasets.Dataset`` with provenance;
4. retrains from the pretrained weights with Accelerate, on the training subsample alone
   (control) and with the fixing examples added, and reports dev and test accuracy of all three
   models.

Outputs under ``--out``: ``trainer/pairdots/{explanations.jsonl, explanations/, report.html}``,
``augmented/`` (the fixing examples), ``summary.json``. Each stage prints its time.

    python recipes/pair_the_dots.py --out runs/sst2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1") if not os.environ.get("PAIRDOTS_ONLINE") else None

import torch  # noqa: E402
from transformers import DataCollatorWithPadding, HfArgumentParser, Trainer, TrainingArguments  # noqa: E402

from hf_pairdots.arguments import ExplainArguments, options_dataclass  # noqa: E402
from hf_pairdots.augment.lexicon import ensure_wordnet  # noqa: E402
from hf_pairdots.callback import PairDotsCallback  # noqa: E402
from hf_pairdots.data import load_text_classification, subsample  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.pipeline import apply_explanations, edit_arguments  # noqa: E402
from hf_pairdots.report import ExplanationStore, write_report  # noqa: E402
from hf_pairdots.training import accuracy, tokenize_dataset, train_classifier  # noqa: E402

LOCAL_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst_sentence"


def default_data() -> str:
    """The local SST-2 sentences when this checkout sits beside ``shared/``, else the Hub id."""
    return str(LOCAL_SST2) if LOCAL_SST2.is_dir() else "glue/sst2"


class Timer:
    """Prints and records how long each stage took."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                print(f"[pairdots] {name} ...", flush=True)
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.start, 1)
                print(f"[pairdots] {name}: {timer.seconds[name]} s", flush=True)
        return _Stage()


@dataclass
class RecipeArguments:
    """The recipe's own options (data, model, training, edits per query)."""

    data: str = field(default_factory=default_data,
                      metadata={"help": "dataset spec (see hf_pairdots.data); default: local SST-2, else glue/sst2"})
    model: str | None = field(default=None, metadata={"help": "Hub id or folder; None = the packaged MiniLM-L6"})
    out: str = field(default="runs/sst2", metadata={"help": "output folder"})
    train_size: int = field(default=2000, metadata={"help": "seeded training subsample (0 = all)"})
    epochs: float = field(default=2, metadata={"help": "training epochs (Trainer and both retrains)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "learning rate (Trainer and both retrains)"})
    fix_per_query: int = field(default=2, metadata={"help": "fixing examples added per explained query"})


EXPLAIN_OPTIONS = options_dataclass("PairTheDotsExplainOptions",
                                    ["max_queries", "top_k", "params", "max_length", "solver", "depth", "seed"],
                                    defaults={"max_queries": 24, "params": "head", "max_length": 64})
"""The explanation options this recipe exposes (help and other defaults from
:mod:`hf_pairdots.arguments`); ``seed`` also seeds the subsample, the head and training."""


def parse_args(argv=None) -> tuple[argparse.Namespace, dict]:
    """All options by name, and the explanation options alone (a flat dict of option names)."""
    parser = HfArgumentParser([RecipeArguments, EXPLAIN_OPTIONS], description=__doc__.split("\n\n")[0])
    recipe, options = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    options = dataclasses.asdict(options)
    return argparse.Namespace(**dataclasses.asdict(recipe), **options), options


def main(argv=None) -> dict:
    a, options = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    torch.manual_seed(a.seed)
    ensure_wordnet()  # before any training

    with timer.stage("load data and model"):
        data = load_text_classification(a.data)
        names = data["train"].features["label"].names
        train = subsample(data["train"], a.train_size, a.seed) if a.train_size else data["train"]
        dev, test = data["validation"], data["test"]
        tokenizer = load_tokenizer(a.model)

        def initial_model():  # the same starting weights (head seeded) for the Trainer and both retrains
            torch.manual_seed(a.seed)
            return load_classifier(a.model, label_names=names)

        model = initial_model()
        print(f"[pairdots] data {a.data}: train subsample {len(train)} of {len(data['train'])} (seed {a.seed}), "
              f"dev {len(dev)}, test {len(test)}; model {a.model or 'packaged MiniLM-L6'}")

    explain_args = edit_arguments("fix", a.fix_per_query, ExplainArguments.from_flat(
        {**options, "edit_top_k": a.fix_per_query, "max_candidates": 10}), top_k=a.top_k)
    callback = PairDotsCallback(dev, train_dataset=train, tokenizer=tokenizer, args=explain_args)
    trainer_args = TrainingArguments(output_dir=str(out / "trainer"), num_train_epochs=a.epochs,
                                     learning_rate=a.learning_rate, per_device_train_batch_size=16, warmup_steps=0.06,
                                     weight_decay=0.01, seed=a.seed, use_cpu=True,
                                     save_strategy="no", report_to=[], logging_steps=50)
    trainer = Trainer(model=model, args=trainer_args, train_dataset=tokenize_dataset(train, tokenizer, a.max_length),
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, callbacks=[callback])
    with timer.stage("fine-tune with Trainer + explain dev errors (PairDotsCallback)"):
        trainer.train()
    timer.seconds["explain (inside the previous stage)"] = callback.last_summary["seconds"]

    with timer.stage("evaluate the fine-tuned model"):
        before = {"dev": accuracy(model, tokenizer, dev, max_length=a.max_length),
                  "test": accuracy(model, tokenizer, test, max_length=a.max_length)}

    explain_dir = out / "trainer" / explain_args.output_subdir
    records = ExplanationStore(explain_dir).explanations()
    collection, augmented_train = apply_explanations(records, train, "fix", per_query=a.fix_per_query, seed=a.seed)
    augmented = collection.dataset
    augmented.save_to_disk(str(out / "augmented"))
    print(f"[pairdots] {len(augmented)} fixing examples from {len(records)} explained dev errors -> {out / 'augmented'}")

    results = {"trainer": before}
    for name, extra in (("retrain: train only", None), ("retrain: train + fixing examples", augmented)):
        with timer.stage(name):
            rows = train if extra is None else augmented_train
            retrained = train_classifier(initial_model(), tokenizer, rows,
                                         epochs=a.epochs, learning_rate=a.learning_rate, max_length=a.max_length,
                                         seed=a.seed)
            results[name] = {"dev": accuracy(retrained, tokenizer, dev, max_length=a.max_length),
                             "test": accuracy(retrained, tokenizer, test, max_length=a.max_length)}

    summary = {"data": a.data, "train_size": len(train), "dev_size": len(dev), "test_size": len(test),
               "explained_queries": len(records), "fixing_examples": len(augmented),
               "accuracy": results, "seconds": timer.seconds, "options": vars(a)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(explain_dir, records, {"data": a.data, "model": a.model or "packaged MiniLM-L6",
                                        "train subsample": len(train), "accuracy": results,
                                        "fixing examples": len(augmented), "seconds": timer.seconds})
    print("\n[pairdots] accuracy (dev / test):")
    for name, acc in results.items():
        print(f"  {name:36s} {acc['dev']:.4f} / {acc['test']:.4f}")
    print(f"[pairdots] report: {explain_dir / 'report.html'}")
    return summary


if __name__ == "__main__":
    main()
