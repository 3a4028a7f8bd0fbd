"""Cached-feature route vs the general route, per encoder family, on MiniLM-sized random models.

    .venv/bin/python benchmarks/bench_cached_route.py --train-size 512

For each family whose head can be cut (BERT, RoBERTa, ELECTRA, MPNet, DeBERTa-v2) a seeded random
classifier of MiniLM-L6's size (6 layers, hidden 384, 12 heads, FFN 1536) with the repository's
small test tokenizer, and ``--train-size`` SST-2 training sentences: the time of preparing the
data (one forward pass for the cached route, tokenisation for the general one) plus ``--hvps``
Hessian-vector products of the mean training loss over ``params="head"``, for
``CachedTopLoss`` and ``FullModelLoss``, and the largest relative difference of their HVPs
(the two are the same function: it should be float32 rounding). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hf_pairdots.autograd import select_parameters
from hf_pairdots.data import load_text_classification, subsample
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, full_hvp, prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from architectures import model, tokenizer  # noqa: E402

MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=514)
FAMILIES = ("bert", "roberta", "electra", "mpnet", "deberta-v2")


def timed(objective, tok, texts, labels, v, hvps):
    start = time.perf_counter()
    data = prepare_data(objective, tok, texts, labels, max_length=64)
    product = full_hvp(objective, data)
    for _ in range(hvps):
        out = product(v)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst_sentence"))
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--hvps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    train = subsample(load_text_classification(args.data)["train"], args.train_size, seed=0)
    texts, labels = list(train["text"]), list(train["label"])
    print("| family | cached (s) | general (s) | speed-up | max rel. HVP difference |\n|---|---|---|---|---|")
    for kind in FAMILIES:
        tok = tokenizer(kind)
        extra = {"electra": {"embedding_size": 384}, "deberta-v2": {"pooler_hidden_size": 384}}.get(kind, {})
        overrides = {**MINILM, **extra}  # set after construction: derived sizes are named too
        net = model(kind, tok, **overrides)
        pset = select_parameters(net, "head")
        v = torch.randn(1, pset.numel, generator=torch.Generator().manual_seed(1))
        cached_s, cached = timed(CachedTopLoss(net, pset), tok, texts, labels, v, args.hvps)
        full_s, full = timed(FullModelLoss(net, pset), tok, texts, labels, v, args.hvps)
        diff = ((cached - full).abs().max() / full.abs().max()).item()
        print(f"| {kind} | {cached_s:.1f} | {full_s:.1f} | {full_s / cached_s:.0f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
