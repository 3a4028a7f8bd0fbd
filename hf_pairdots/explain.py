"""Explain test examples the paper's way (Sec. 4.1): salient words, then the training examples
and the words inside them that made the model attend there.

For each query and each explained label y (the predicted label y' and the gold label y):

1. word saliency for y (Sec. 3.1) and the most salient word x_t;
2. m = s(x_t) for y (``salient_by="value"``, the paper), or |s(x_t)| (``"magnitude"``: the
   saliency times its sign at θ, so that raising m means attending more to x_t either way);
   ∇θ m by double backward; s_test = (H + λI)⁻¹ ∇θ m (App. B);
3. I(z_i, w_y(e)) for every training example (Eq. 5), top-k by descending influence: the
   examples whose up-weighting most raises the attention to x_t;
4. in each of those, I(x_t, w_y(e)) of every word (Eq. 8); the largest is the responsible word;
5. optionally (``args.edit``), the WordNet edit of each of those examples chosen by the
   two-stage search of Eq. 11-12 (:mod:`hf_pairdots.augment.search`).

:class:`Explainer` prepares the training side once (cached features, damping and scale) and
explains queries in chunks, all rows of a chunk sharing one LiSSA run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .arguments import ExplainArguments
from .augment.lexicon import Lexicon, ensure_wordnet
from .augment.search import OBJECTIVES, search_edit
from .distributed import broadcast_tensor, sharded_train_influence
from .influence import (compute_s_test, lowrank_hessian, make_objective, prepare_data, resolve_damping_scale,
                        saliency_measurement_gradient, word_influence)
from .saliency import encode_words, find_embedding_block, model_inputs, saliency


@dataclass
class Query:
    """One example to explain: its row ``index`` in the query split, ``text`` and ``gold`` label
    (``None`` when the split has no labels: only the predicted label is explained then)."""

    index: int
    text: str
    gold: int | None


@torch.no_grad()
def predict_proba(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64,
                  max_length: int = 128, show_progress: bool = False) -> torch.Tensor:
    """Class probabilities ``(N, num_labels)``; texts must be non-empty. Cost: N forward passes."""
    out = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not show_progress, desc="predict"):
        enc, _, _ = encode_words(tokenizer, texts[start:start + batch_size], max_length)
        out.append(model(**model_inputs(dict(enc))).logits.float().softmax(-1))
    return torch.cat(out) if out else torch.empty(0, model.config.num_labels)


class Explainer:
    """Saliency + influence explanations against one training set.

    Args:
        model: the trained classifier, float32, eval mode (see
            :func:`hf_pairdots.influence.influence_mode`).
        tokenizer: its tokenizer.
        train_texts, train_labels: the training set (the Hessian and the candidates).
        args: :class:`~hf_pairdots.arguments.ExplainArguments`.
        label_names: names of the labels (default ``model.config.id2label``).

    Cost of construction: one forward pass over the training set (cached top features) and the
    eigenvalue estimates for automatic damping/scale (about 2 x power_iters full-data HVPs).

    Raises:
        SaliencyError: the model has no embedding block (case C14), before any work.
    """

    def __init__(self, model: nn.Module, tokenizer, train_texts: Sequence[str], train_labels: Sequence[int],
                 args: ExplainArguments, label_names: Sequence[str] | None = None, show_progress: bool = False):
        find_embedding_block(model)  # SaliencyError now rather than after the training-side work
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.train_texts, self.train_labels = list(train_texts), [int(y) for y in train_labels]
        self.label_names = list(label_names or [model.config.id2label[i] for i in range(model.config.num_labels)])
        self.show_progress = show_progress
        self.objective = make_objective(model, args.params)
        self.data = prepare_data(self.objective, tokenizer, self.train_texts, self.train_labels,
                                 batch_size=args.batch_size, max_length=args.max_length)
        self.lexicon = None
        if args.edit:
            ensure_wordnet()  # fail before any work (case C27)
            self.lexicon = Lexicon()
        self.solver, self.eigenvalues = resolve_damping_scale(self.objective, self.data, args.solver)
        self.lowrank = lowrank_hessian(self.objective, self.data, self.solver) if self.solver.solver == "lowrank" else None

    def explain(self, queries: Sequence[Query]) -> list[dict]:
        """Explanation records (schema in docs/ARCHITECTURE.md) for ``queries``, in order.

        Cost: one LiSSA run for all 1-2 x len(queries) measurements together, one forward-mode
        pass over the training set, and one pass over W + 1 variants of each distinct top-k
        example (shared by every measurement whose top-k holds it).
        """
        if not queries:
            return []
        texts = [q.text for q in queries]
        probs = predict_proba(self.model, self.tokenizer, texts, max_length=self.args.max_length)
        rows = self._rows(queries, probs)
        v = torch.stack([self._measurement_gradient(row) for row in rows])
        result = compute_s_test(self.objective, self.data, v, self.solver, lowrank=self.lowrank)
        # Several processes: s_test is solved on every rank and rank 0's copy kept, so every rank
        # scores with the same vector; the training pass is split by rank and gathered by id.
        result.x = broadcast_tensor(result.x)
        scores = sharded_train_influence(self.objective, self.data, result.x)
        tops = [torch.topk(scores[r], min(self.args.top_k, scores.shape[1])) for r in range(len(rows))]
        per_word = self._word_influence(tops, result.x)
        for r, row in enumerate(tqdm(rows, disable=not self.show_progress, desc="edits" if self.lexicon else "rows")):
            row["top_train"] = self._top_train(tops[r], per_word, r, result.x[r:r + 1], row["role"])
        diagnostics = {k: v for k, v in result.diagnostics.items() if k not in ("relative_residual", "norm_trace")}
        return [self._record(q, probs[i], [row for row in rows if row["query"] == i], result, diagnostics)
                for i, q in enumerate(queries)]

    def _rows(self, queries: Sequence[Query], probs: torch.Tensor) -> list[dict]:
        """One row per (query, explained label): label, role, word saliency."""
        rows = []
        for i, q in enumerate(queries):
            ranked = probs[i].argsort(descending=True).tolist()
            wrong = ranked[0]
            if self.args.edit == "attack" and wrong == q.gold and len(ranked) > 1:
                wrong = ranked[1]  # y' of Eq. 10 must be a wrong label: the runner-up
            roles = {"predicted": wrong, "gold": q.gold}
            seen = set()
            for role in self.args.labels:
                label = roles[role]
                if label is None or label in seen:
                    continue
                seen.add(label)
                [sal] = saliency(self.model, self.tokenizer, [q.text], [label], mode=self.args.saliency_mode,
                                 target=self.args.saliency_target, max_length=self.args.max_length)
                rows.append({"row": len(rows), "query": i, "role": role, "label": label, "saliency": sal,
                             "salient_word": sal.rank(self.args.salient_by)[0], "text": q.text})
        return rows

    def _measurement_gradient(self, row: dict) -> torch.Tensor:
        enc, _, _ = encode_words(self.tokenizer, [row["text"]], self.args.max_length)
        word = row["salient_word"]
        positions = [p for p, w in enumerate(enc.word_ids(0)) if w == word]
        sign = -1.0 if self.args.salient_by == "magnitude" and row["saliency"].scores[word] < 0 else 1.0
        return sign * saliency_measurement_gradient(self.model, self.objective.params, model_inputs(dict(enc)),
                                                    row["label"], positions, mode=self.args.saliency_mode,
                                                    target=self.args.saliency_target)

    def _word_influence(self, tops, s_test: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """Eq. 8 scores ``(W,)`` keyed by (row, training index), each distinct training example's
        erased variants prepared once for all the rows whose top-k holds it."""
        rows_of: dict[int, list[int]] = {}
        for r, top in enumerate(tops):
            for index in top.indices.tolist():
                rows_of.setdefault(index, []).append(r)
        out = {}
        for index, rows in tqdm(rows_of.items(), disable=not self.show_progress, desc="responsible words"):
            scores = word_influence(self.objective, self.tokenizer, self.train_texts[index], self.train_labels[index],
                                    s_test[rows], eraser=self.args.eraser, max_length=self.args.max_length)
            out.update({(r, index): scores[j] for j, r in enumerate(rows)})
        return out

    def _top_train(self, top, per_word_of: dict, r: int, s_test: torch.Tensor, role: str) -> list[dict]:
        out = []
        edit_top_k = len(top.indices) if self.args.edit_top_k is None else self.args.edit_top_k
        for rank, (influence, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            text, label = self.train_texts[index], self.train_labels[index]
            per_word = per_word_of[(r, index)]
            _, _, [cut] = encode_words(self.tokenizer, [text], self.args.max_length)
            kept = len(text.split()) - cut
            word_scores = [float(x) if t < kept else None for t, x in enumerate(per_word.tolist())]
            entry = {"train_index": index, "text": text, "label": label, "label_name": self.label_names[label],
                     "influence": influence, "words": text.split(), "word_influence": word_scores,
                     "responsible_word": int(per_word[:kept].argmax())}
            if self.lexicon is not None and rank < edit_top_k:
                entry["edit"] = self._edit(text, label, s_test, role, per_word, index)
            out.append(entry)
        return out

    def _edit(self, text: str, label: int, s_test: torch.Tensor, role: str, per_word: torch.Tensor,
              index: int) -> dict:
        """The proposed edit of one training example, as a JSON-ready dict (``reason`` when none)."""
        name = {("fix", "gold"): "fix_up", ("fix", "predicted"): "fix_down",
                ("attack", "gold"): "attack_down", ("attack", "predicted"): "attack_up"}[(self.args.edit, role)]
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + index)
        result = search_edit(self.objective, self.tokenizer, self.lexicon, text, label, s_test, OBJECTIVES[name],
                             num_sampled=self.args.num_sampled, max_candidates=self.args.max_candidates,
                             generator=generator, eraser=self.args.eraser, max_length=self.args.max_length,
                             word_scores=per_word)
        if result.edit is None:
            return {"objective": name, "reason": result.reason}
        return result.edit.to_record(name)

    def _record(self, query: Query, probs: torch.Tensor, rows: list[dict], result, diagnostics: dict) -> dict:
        _, words, [cut] = encode_words(self.tokenizer, [query.text], self.args.max_length)
        predicted = int(probs.argmax())
        return {
            "query_index": query.index,
            "text": query.text,
            "gold": query.gold,
            "gold_name": None if query.gold is None else self.label_names[query.gold],
            "predicted": predicted,
            "predicted_name": self.label_names[predicted],
            "probabilities": probs.tolist(),
            "words": words[0],
            "truncated_words": cut,
            "labels": [{
                "label": row["label"], "label_name": self.label_names[row["label"]], "role": row["role"],
                "probability": row["saliency"].probability,
                "saliency": row["saliency"].scores,
                "salient_word": row["salient_word"],
                "top_train": row["top_train"],
            } for row in rows],
            "diagnostics": {**diagnostics, "relative_residual": [
                result.diagnostics["relative_residual"][row["row"]] for row in rows]},
        }
