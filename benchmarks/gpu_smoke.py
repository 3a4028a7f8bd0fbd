"""GPU smoke check: PairDotsCallback in a Trainer run on CUDA, then the Explainer on CUDA vs CPU.

    .venv/bin/python benchmarks/gpu_smoke.py            # prints OK, or SKIPPED without CUDA
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu   # dry run of this script on the CPU

1. A tiny BERT is trained by ``transformers.Trainer`` (which puts it on the GPU) with
   ``PairDotsCallback``; the callback must write one explanation per dev row, with finite
   influences, while the model stays on the GPU.
2. The same trained weights explain the same queries on the GPU and on a CPU copy, for each
   solver (LiSSA with automatic damping/scale and repeats, CG over ``"top"``, exact over
   ``"classifier"``, low-rank, the full model over ``"last:1"``), with Eq. 8 by the ``"zero"``
   eraser and, when WordNet is installed, fixing edits; then once more from an s_test cache
   filled on the GPU. Probabilities, saliencies and influences must agree up to float32 rounding
   (relative tolerance ``--rtol`` of the largest magnitude, 10x for what goes through ARPACK and
   for Eq. 8 differences; guesses, not yet calibrated on a GPU: the script prints every
   difference), and the top-1 training example must be the same.

Exits 0 with "SKIPPED: ..." when torch sees no CUDA device (and ``--device cuda``), 0 with "OK"
after every check passed, non-zero (an exception) otherwise. About a minute on one GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments  # noqa: E402

from hf_pairdots.arguments import ExplainArguments, SolverOptions  # noqa: E402
from hf_pairdots.callback import PairDotsCallback  # noqa: E402
from hf_pairdots.explain import Explainer, Query  # noqa: E402
from hf_pairdots.modeling import model_device, predict_proba  # noqa: E402
from hf_pairdots.models import load_tokenizer, tiny_bert  # noqa: E402
from hf_pairdots.training import accuracy, tokenize_dataset  # noqa: E402

NAMES = ["neg", "pos"]
POSITIVE = ["good", "great", "fun", "lovely", "warm", "best", "fine", "funny"]
NEGATIVE = ["bad", "boring", "awful", "dull", "terrible", "worst", "weak", "slow"]
FILLER = ["the", "movie", "was", "plot", "actor", "story", "a", "film", "scene", "about"]


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def pick(words, k):
        return [words[i] for i in torch.randperm(len(words), generator=g)[:k].tolist()]

    rows = []
    for i in range(48):
        label = i % 2
        rows.append({"text": " ".join(pick(FILLER, 3) + pick(POSITIVE if label else NEGATIVE, 1)), "label": label})
    dev = [{"text": "a good fun movie", "label": 1}, {"text": "the plot was dull", "label": 0},
           {"text": "a warm story about a slow actor", "label": 1}, {"text": "the worst film", "label": 1}]

    def as_dataset(r):
        return datasets.Dataset.from_list(r).cast_column("label", datasets.ClassLabel(names=NAMES))
    return as_dataset(rows), as_dataset(dev)


def _close(name: str, a, b, rtol: float) -> float:
    """Max |a - b| relative to max |b|; raises when above ``rtol``."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) / max(scale, 1e-30) if b.numel() else 0.0
    status = "ok" if err <= rtol else "FAIL"
    print(f"    {name:<28} max rel diff {err:.2e} ({status})")
    if not err <= rtol:
        raise AssertionError(f"{name}: device and CPU differ by {err:.3g} > rtol {rtol:g}")
    return err


def _flatten(records: list[dict]) -> dict[str, list[float]]:
    out = {"probabilities": [], "saliency": [], "influence": [], "word_influence": []}
    for r in records:
        out["probabilities"] += r["probabilities"]
        for entry in r["labels"]:
            out["saliency"] += [s for s in entry["saliency"] if s is not None]
            for t in entry["top_train"]:
                out["influence"].append(t["influence"])
                out["word_influence"] += [s for s in t["word_influence"] if s is not None]
    return out


def check_callback(device: str, tok, train, dev, out: Path) -> torch.nn.Module:
    print(f"[1] Trainer + PairDotsCallback on {device}")
    args = ExplainArguments(queries="all", top_k=3, max_length=16, batch_size=16,
                            solver=SolverOptions(depth=100, batch_size=16))
    model = tiny_bert(initializer_range=0.1)
    targs = TrainingArguments(output_dir=str(out), num_train_epochs=15, learning_rate=3e-3,
                              per_device_train_batch_size=16, use_cpu=device == "cpu", save_strategy="no",
                              report_to=[], disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=tokenize_dataset(train, tok, 16),
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok,
                      callbacks=[PairDotsCallback(dev, train_dataset=train, args=args)])
    start = time.perf_counter()
    trainer.train()
    model = trainer.model
    if model_device(model).type != torch.device(device).type:
        raise AssertionError(f"the Trainer left the model on {model_device(model)}, expected {device}")
    lines = (out / "pairdots" / "explanations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if len(records) != len(dev):
        raise AssertionError(f"{len(records)} explanations for {len(dev)} dev rows")
    influences = [t["influence"] for r in records for e in r["labels"] for t in e["top_train"]]
    if not influences or not all(math.isfinite(x) for x in influences):
        raise AssertionError(f"influences missing or not finite: {influences}")
    print(f"    {len(records)} records, {len(influences)} top-k influences, "
          f"dev accuracy {accuracy(model, tok, dev, max_length=16):.2f}, {time.perf_counter() - start:.1f} s")
    return model


def check_against_cpu(model, tok, train, dev, rtol: float, cache_dir: Path) -> None:
    device = model_device(model)
    print(f"[2] Explainer on {device} vs a CPU copy")
    cpu_model = copy.deepcopy(model).cpu().eval()
    model.eval()
    queries = [Query(i, r["text"], r["label"]) for i, r in enumerate(dev)]
    texts, labels = list(train["text"]), list(train["label"])
    _close("predict_proba", predict_proba(model, tok, texts), predict_proba(cpu_model, tok, texts), rtol)
    edit = None
    try:
        from hf_pairdots.augment.lexicon import ensure_wordnet

        ensure_wordnet()
        edit = "fix"
    except Exception as err:  # WordNet missing: edits are not checked
        print(f"    (no WordNet, edits not checked: {type(err).__name__})")
    # name: (solver options, explain arguments, tolerance factor). Automatic damping/scale come from
    # ARPACK runs fed with device HVPs: their float32 rounding moves λ and σ a little, hence 10x.
    configs = {
        "lissa auto, repeat 2": (dict(depth=60, repeat=2, batch_size=16, power_iters=10), dict(edit=edit), 10),
        "cg top": (dict(solver="cg", damping=0.5, cg_max_iter=100), dict(params="top"), 1),
        "exact classifier": (dict(solver="exact", damping=0.1), dict(params="classifier"), 1),
        "lowrank": (dict(solver="lowrank", damping=0.5, rank=10), {}, 10),
        "cg full last:1": (dict(solver="cg", damping=0.5, cg_max_iter=30), dict(params="last:1"), 1),
    }
    for name, (solver, extra, factor) in configs.items():
        args = ExplainArguments(queries="all", top_k=3, max_length=16, batch_size=16, eraser="zero",
                                solver=SolverOptions(**solver), **extra)
        start = time.perf_counter()
        on_device = [r.to_dict() for r in Explainer(model, tok, texts, labels, args).explain(queries)]
        seconds = time.perf_counter() - start
        on_cpu = [r.to_dict() for r in Explainer(cpu_model, tok, texts, labels, args).explain(queries)]
        print(f"  {name}: {seconds:.1f} s on {device}")
        json.dumps(on_device)
        a, b = _flatten(on_device), _flatten(on_cpu)
        for key in a:
            _close(key, a[key], b[key], factor * rtol * (10 if key == "word_influence" else 1))
        top1 = [[e["top_train"][0]["train_index"] for e in r["labels"]] for r in on_device]
        top1_cpu = [[e["top_train"][0]["train_index"] for e in r["labels"]] for r in on_cpu]
        if top1 != top1_cpu:
            raise AssertionError(f"{name}: top-1 training examples differ: {top1} vs {top1_cpu}")
    args = ExplainArguments(queries="all", top_k=3, max_length=16, batch_size=16,
                            solver=SolverOptions(damping=0.5, scale=20.0, depth=60, batch_size=16,
                                                 cache_dir=str(cache_dir)))
    first = [r.to_dict() for r in Explainer(model, tok, texts, labels, args).explain(queries)]
    again = [r.to_dict() for r in Explainer(model, tok, texts, labels, args).explain(queries)]
    if not all(all(r["diagnostics"]["cached"]) for r in again):
        raise AssertionError("the second explanation did not read the cache")
    _close("cache hit vs solve", _flatten(again)["influence"], _flatten(first)["influence"], 1e-6)
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of this script)")
    parser.add_argument("--rtol", type=float, default=2e-3)
    parser.add_argument("--out", default=None, help="folder for the Trainer's outputs (default: a temp folder)")
    a = parser.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("SKIPPED: no CUDA device visible to torch")
        return 0
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    tok = load_tokenizer()
    train, dev = _data()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        model = check_callback(a.device, tok, train, dev, out / "trainer")
        check_against_cpu(model, tok, train, dev, a.rtol, out / "cache")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
