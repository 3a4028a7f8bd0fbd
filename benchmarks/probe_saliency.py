"""Probe: plausibility of occlusion and integrated-gradients saliency (not library options yet).

    python benchmarks/probe_saliency.py MODEL_DIR [--steps 16]

MODEL_DIR: the model ``bench_explanations.py`` trained and cached (MiniLM-L6, 2,000 SST-2
sentences, 2 epochs; ``/tmp/bench_cache/minilm_n2000_e2_L64_s0/model``). The rows are the
benchmark's: every dev error x (predicted, gold) label. For each row and word t:

* occlusion: S_y(x) - S_y(x with t's tokens replaced by [UNK]) (the Eq. 8 eraser applied to the
  saliency instead of the influence); cost one forward pass per word;
* integrated gradients: Σ_j e_t,j · mean_k ∂S_y/∂e_t,j at e·(k + ½)/steps, the zero vector at the
  embedding block output as baseline (midpoint rule); cost ``steps`` forward + backward passes.

Prints the share of rows whose most salient word (by value and by magnitude) is polar for the
row's label in the SST treebank (bench_explanations' definition), with the chance level.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import bench_explanations as bench  # noqa: E402
from hf_pairdots.arguments import ExplainArguments  # noqa: E402
from hf_pairdots.callback import select_queries  # noqa: E402
from hf_pairdots.data import load_text_classification  # noqa: E402
from hf_pairdots.explain import predict_proba  # noqa: E402
from hf_pairdots.influence import influence_mode  # noqa: E402
from hf_pairdots.modeling import find_embedding_block  # noqa: E402
from hf_pairdots.models import load_classifier, load_tokenizer  # noqa: E402
from hf_pairdots.saliency import _Perturbation, label_score  # noqa: E402


def occlusion(model, enc, word_ids, label, unk: int) -> list[float]:
    """S_y(x) - S_y(x without word t) for each word t, ``(T_words,)``."""
    words = max(w for w in word_ids if w is not None) + 1
    variants = []
    for w in range(words):
        ids = enc["input_ids"].clone()
        ids[0, [i for i, x in enumerate(word_ids) if x == w]] = unk
        variants.append(ids)
    with torch.no_grad():
        base = label_score(model(**enc).logits, label)[0]
        erased = label_score(model(input_ids=torch.cat(variants),
                                   attention_mask=enc["attention_mask"].expand(words, -1)).logits, label.expand(words))
    return (base - erased).tolist()


def integrated_gradients(model, enc, word_ids, label, steps: int) -> list[float]:
    """Integrated gradients of S_y per word from the zero embedding, ``(T_words,)``."""
    with _Perturbation(find_embedding_block(model)) as p:
        with torch.no_grad():
            model(**enc)
            e = p.embeddings.detach()
        total = torch.zeros_like(e)
        for k in range(steps):
            delta = (((k + 0.5) / steps - 1.0) * e).requires_grad_(True)
            p.delta = delta
            (g,) = torch.autograd.grad(label_score(model(**enc).logits, label).sum(), delta)
            total += g / steps
    per_token = (total * e).sum(-1)[0]
    out = [0.0] * (max(w for w in word_ids if w is not None) + 1)
    for i, w in enumerate(word_ids):
        if w is not None:
            out[w] += float(per_token[i])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=16)
    a = p.parse_args()
    torch.manual_seed(0)
    data = load_text_classification(str(bench.SHARED / "sst_sentence"))
    dev, tok = data["validation"], load_tokenizer()
    model = load_classifier(a.model, label_names=data["train"].features["label"].names).eval()
    index = bench.treebank_leaf_labels()
    hits, chance, start = collections.defaultdict(list), [], time.time()
    with influence_mode(model) as m:
        probs = predict_proba(m, tok, list(dev["text"]), max_length=64)
        queries, _ = select_queries(list(dev["text"]), list(dev["label"]), probs,
                                    ExplainArguments(max_queries=None, max_length=64))
        leaves = {q.index: bench.sentence_leaves(index, q.text) for q in queries}
        for r in bench.explained_rows(queries, probs):
            enc = tok(r["text"].split(), is_split_into_words=True, truncation=True, max_length=64, return_tensors="pt")
            word_ids, label = enc.word_ids(0), torch.tensor([r["label"]])
            polar = [bench.polar(leaf, r["label"]) for leaf in leaves[r["query"]]]
            chance.append(sum(polar) / len(polar))
            for name, scores in (("occlusion", occlusion(m, enc, word_ids, label, tok.unk_token_id)),
                                 ("integrated_gradients", integrated_gradients(m, enc, word_ids, label, a.steps))):
                hits[name + "/value"].append(polar[max(range(len(scores)), key=scores.__getitem__)])
                hits[name + "/magnitude"].append(polar[max(range(len(scores)), key=lambda i: abs(scores[i]))])
    out = {k: sum(v) / len(v) for k, v in hits.items()}
    out.update(chance=sum(chance) / len(chance), rows=len(chance), seconds=round(time.time() - start, 1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
