"""The fixed small run whose outputs must not change under refactoring (records, edits, report).

``python tests/golden/make_golden.py`` rewrites ``tests/golden/run.json``; ``tests/test_golden.py``
reruns it and compares bitwise. Regenerate only for an intended change of behaviour, and say so
in the commit message.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import datasets
import torch

NAMES = ["neg", "pos"]
POS = ["good", "great", "happy", "fine", "nice"]
NEG = ["bad", "awful", "sad", "poor", "dull"]
FILLER = ["the", "movie", "was", "plot", "actor", "story", "a", "film", "scene", "about"]


def sentiment_rows(seed: int, n: int) -> list[dict]:
    """n five-word sentences, one sentiment word each (label i % 2), seeded."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def sentiment_dataset(rows):
    return datasets.Dataset.from_list(rows).cast_column("label", datasets.ClassLabel(names=NAMES))


def trained_tiny_bert(tok, train):
    """A tiny BERT (seed 0) after 30 full-batch Adam steps (lr 3e-3) on ``train``, in eval mode."""
    from hf_pairdots.models import tiny_bert

    model = tiny_bert(seed=0)
    enc = tok(list(train["text"]), padding=True, return_tensors="pt")
    labels = torch.tensor(train["label"])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        optimiser.zero_grad()
        model(**enc, labels=labels).loss.backward()
        optimiser.step()
    return model.eval()


def _normalised_html(text: str) -> str:
    return re.sub(r"(seconds</th><td>)[^<]*", r"\1<seconds>", text)


def golden_run(out: Path) -> dict:
    """Train a tiny BERT (seed 0), explain every dev row with fixing edits, collect and apply
    them; return everything a refactor must keep: records, the augmented training set, the
    report's text and the summary without timings."""
    from hf_pairdots.arguments import ExplainArguments, SolverOptions
    from hf_pairdots.augment.dataset import apply_edits, collect_edits, explain_labels
    from hf_pairdots.pipeline import explain_dataset
    from hf_pairdots.models import load_tokenizer
    from hf_pairdots.report import ExplanationStore

    torch.manual_seed(0)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_tokenizer()
        train, dev = sentiment_dataset(sentiment_rows(0, 40)), sentiment_dataset(sentiment_rows(1, 6))
        model = trained_tiny_bert(tok, train)
        args = ExplainArguments(queries="all", labels=explain_labels("fix"), top_k=4, max_length=16, edit="fix",
                                solver=SolverOptions(solver="cg"))
        summary = explain_dataset(model, tok, train, dev, args, out)
        records = sorted(ExplanationStore(out).records(), key=lambda r: r["query_index"])
        collection = collect_edits(records, train, "fix", per_query=2, seed=0)
        augmented = apply_edits(train, collection.dataset)
        summary.pop("seconds")
        return {"summary": summary, "records": records, "shortfalls": collection.shortfalls,
                "edits": collection.dataset.to_list(), "augmented": augmented.to_list(),
                "report": _normalised_html((out / "report.html").read_text())}
    finally:
        torch.set_num_threads(old_threads)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = golden_run(Path(tmp) / "run")
    path = Path(__file__).with_name("run.json")
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({len(result['records'])} records, {len(result['edits'])} edits)", file=sys.stderr)
