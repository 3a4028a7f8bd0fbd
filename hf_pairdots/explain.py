"""Explain test examples the paper's way (Sec. 4.1): salient words, then the training examples
and the words inside them that made the model attend there.

For each query and each explained label y (the predicted label y' and the gold label y):

1. word saliency for y (Sec. 3.1) and the most salient word x_t;
2. m = s(x_t) for y (``salient_by="value"``, the paper), or |s(x_t)| (``"magnitude"``: the
   saliency times its sign at θ, so that raising m means attending more to x_t either way);
   ∇θ m (:meth:`~hf_pairdots.loss.TrainLoss.saliency_gradients`, both labels of a query
   together); s_test = (H + λI)⁻¹ ∇θ m (App. B, solver ``auto`` by default);
3. I(z_i, w_y(e)) for every training example (Eq. 5), top-k by descending influence: the
   examples whose up-weighting most raises the attention to x_t;
4. in each of those, I(x_t, w_y(e)) of every word (Eq. 8); the largest is the responsible word;
5. optionally (``args.edit``), the WordNet edit of each of those examples chosen by the
   two-stage search of Eq. 11-12 (:mod:`hf_pairdots.augment.search`).

:class:`Explainer` prepares the training side once (cached features, damping and scale) and
explains queries in chunks, all rows of a chunk sharing one solve.

Reuse (issue #3, capability 6): with ``SolverOptions.cache_dir`` set, s_test and the Eq. 5
training scores of every measurement row are kept in an :class:`~hf_pairdots.cache.STestCache`
under a key of (model fingerprint, training-data fingerprint, resolved solver options, the
arguments that change s_test, the bytes of the row's ∇θ m). A later :meth:`Explainer.explain`
that meets the same row reads it back instead of solving; only the missing rows of a chunk are
solved, together. Diagnostics (issue #3, capability 7) say per row whether it came from the
cache, its relative residual, and with LiSSA repeats the top-k overlap across the repeats.

Devices: the model may sit on any one device (a GPU after ``Trainer``); every forward, HVP and
solve runs there (:mod:`hf_pairdots.influence`). Probabilities, saliencies, training scores and
records are on the CPU; s_test rows stay on the model's device (and are copied to the CPU only
to be cached).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .arguments import ExplainArguments
from .augment.lexicon import Lexicon, ensure_wordnet
from .augment.goals import EditGoal
from .augment.search import search_edit
from .cache import STestCache, cache_key, fingerprint_model, fingerprint_tensor, fingerprint_texts
from .distributed import broadcast_object, broadcast_tensor, is_main_process, sharded_train_influence
from .influence import gradient_norms, prepare_word_variants, rank_scores, word_influence
from .loss import make_train_loss, prepare_data
from .modeling import autocast_disabled, find_embedding_block, first_position_only, predict_proba
from .saliency import saliency
from .solve import compute_s_test, lowrank_hessian, resolve_damping_scale
from .text import encode_words, unscorable_texts, word_encoding
from .stability import topk_overlap

RESIDUAL_EXAMPLES = 256
"""Training examples whose Hessian measures each row's relative residual (part of the cache key)."""

_ROW_DIAGNOSTICS = ("relative_residual", "repeat_relative_spread", "repeat_relative_spread_per_query",
                    "norm_trace", "repeats")
"""Solver diagnostics that are per row, per chunk trace or tensors: not copied as solve-level values."""


@dataclass
class Query:
    """One example to explain: its row ``index`` in the query split, ``text`` and ``gold`` label
    (``None`` when the split has no labels: only the predicted label is explained then)."""

    index: int
    text: str
    gold: int | None


@dataclass
class SolvedRows:
    """s_test and the Eq. 5 training scores of Q measurement rows, solved now or read from the cache.

    Attributes:
        x: ``(Q, P)`` s_test = (H + λI)⁻¹ ∇θ m per row, on the model's device.
        scores: ``(Q, n)`` I(z_i, m) (Eq. 5; positive: up-weighting z_i raises m), on the CPU, over
            the n training rows the Explainer kept: column j is dataset row ``train_rows[j]``.
        repeat_scores: ``(R, Q, n)`` the same scores from each LiSSA repeat's s_test (LiSSA with
            ``repeat > 1``, on the CPU), else ``None``.
        meta: per row, the JSON metadata stored with its s_test: ``relative_residual`` (float),
            ``solve`` (solve-level diagnostics: solver, damping, scale, ...) and, with repeats,
            ``repeat_relative_spread`` (float).
        cached: per row, whether it was read from the cache.
    """

    x: torch.Tensor
    scores: torch.Tensor
    repeat_scores: torch.Tensor | None
    meta: list[dict]
    cached: list[bool]


class Explainer:
    """Saliency + influence explanations against one training set.

    Args:
        model: the trained classifier, float32, eval mode (see
            :func:`hf_pairdots.modeling.influence_mode`), on any one device (its inputs,
            cached features, Hessian products and s_test are put there).
        tokenizer: its tokenizer.
        train_texts, train_labels: the training set (the Hessian and the candidates). Rows in
            which no word can be scored (empty or whitespace only, or every word deleted by the
            tokenizer's normaliser: the model would see special tokens only) are left out of
            both and listed in :attr:`skipped_train_rows`; records still give every training
            example by its row here (``train_index``), and no skipped row gets a score.
        args: :class:`~hf_pairdots.arguments.ExplainArguments`.
        label_names: names of the labels (default ``model.config.id2label``).

    Construction, :meth:`explain` and :meth:`solve` run in float32 even inside a caller's
    ``torch.autocast`` region (:func:`~hf_pairdots.modeling.autocast_disabled`).

    Cost of construction: one forward pass over the training set (cached top features) and the
    eigenvalue estimates for automatic damping/scale, or for the definiteness check of a user-set
    damping (except ``solver="exact"``, which checks its explicit Hessian), about 2 x power_iters
    full-data HVPs (:func:`~hf_pairdots.solve.resolve_damping_scale`);
    with ``args.solver.cache_dir`` also one sha256 pass over the model's weights and the
    training texts (:func:`~hf_pairdots.cache.fingerprint_model`, 0.4 s for MiniLM-L6); with
    ``args.ranking="unit"`` one per-example gradient pass over the training set
    (:func:`~hf_pairdots.influence.gradient_norms`).

    Cache key of a measurement row (``args.solver.cache_dir`` set): ``cache_key("s_test",
    model fingerprint (θ_S, the rest of the network, config), training-set fingerprint (texts,
    labels, order), the solver options with the *resolved* damping and scale, {params,
    max_length, batch_size, objective, residual_examples}, sha256 of the row's ∇θ m)``. The
    training scores of that row are stored under ``cache_key("train_scores", row key)`` and, with
    LiSSA repeats, the per-repeat scores ``(R, n)`` under ``cache_key("train_scores_repeats", row
    key)``. Anything else that changes ∇θ m (saliency mode, target, the query text, the label)
    changes the row's bytes and so its key. A changed model, training set or argument is a miss,
    never a wrong hit; automatic damping is resolved again by each Explainer (deterministically for
    one machine and thread count), so identical setups share entries.

    Attributes:
        train_rows: the rows of ``train_texts`` that are scored, in order (the columns of
            :attr:`SolvedRows.scores` and of the prepared data).
        skipped_train_rows: ``[{"index": row, "reason": str}, ...]``, the rows left out.
        train_gradient_norms: ``(n,)`` ||∇θ L(z)||₂ of the scored rows (CPU) with
            ``args.ranking="unit"``, else ``None``.

    Raises:
        SaliencyError: the model has no embedding block (case C14), before any work.
        ValueError: no training row can be scored, before any work.
        IndefiniteHessianError: a user-set ``damping`` leaves H + λI indefinite (a ``ValueError``;
            :func:`~hf_pairdots.ihvp.check_positive_definite`), before any query.
    """

    @autocast_disabled()
    def __init__(self, model: nn.Module, tokenizer, train_texts: Sequence[str], train_labels: Sequence[int],
                 args: ExplainArguments, label_names: Sequence[str] | None = None, show_progress: bool = False):
        find_embedding_block(model)  # SaliencyError now rather than after the training-side work
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.train_texts, self.train_labels = list(train_texts), [int(y) for y in train_labels]
        self.label_names = list(label_names or [model.config.id2label[i] for i in range(model.config.num_labels)])
        self.show_progress = show_progress
        self.skipped_train_rows = skipped_rows(tokenizer, self.train_texts, args.max_length)
        skipped = {row["index"] for row in self.skipped_train_rows}
        self.train_rows = [i for i in range(len(self.train_texts)) if i not in skipped]
        if not self.train_rows:
            raise ValueError(f"no training row can be scored ({_first_reasons(self.skipped_train_rows)}); give "
                             "texts with at least one word the tokenizer keeps")
        kept_texts = [self.train_texts[i] for i in self.train_rows]
        kept_labels = [self.train_labels[i] for i in self.train_rows]
        self.objective = make_train_loss(model, args.params)
        self.data = prepare_data(self.objective, tokenizer, kept_texts, kept_labels, batch_size=args.batch_size,
                                 max_length=args.max_length, rows=self.train_rows)
        self.lexicon = None
        self._variants: dict[int, dict] = {}  # training index -> its Eq. 8 variants, prepared
        if args.edit:
            ensure_wordnet()  # fail before any work (case C27)
            self.lexicon = Lexicon()
        self.solver, self.eigenvalues = resolve_damping_scale(self.objective, self.data, args.solver)
        self.lowrank = lowrank_hessian(self.objective, self.data, self.solver) if self.solver.solver == "lowrank" else None
        self.train_gradient_norms = gradient_norms(self.objective, self.data) if args.ranking == "unit" else None
        # LiSSA repeats: keep each repeat's s_test for the top-k stability (issue #3, capability 7).
        self.repeats = self.solver.repeat if self.solver.solver == "lissa" and self.solver.repeat > 1 else 0
        self.cache = None
        if self.solver.cache_dir is not None:
            self.cache = STestCache(self.solver.cache_dir)
            self._key_parts = (
                fingerprint_model(model, self.objective.params),
                fingerprint_texts(kept_texts, kept_labels),  # the scored rows: the score columns
                self.solver,  # resolved λ and σ; cache_key leaves out keep_repeats and cache_dir
                {"params": args.params, "max_length": args.max_length, "batch_size": args.batch_size,
                 "objective": self.objective.key_name, "residual_examples": RESIDUAL_EXAMPLES},
            )

    @autocast_disabled()
    def explain(self, queries: Sequence[Query]) -> list[dict]:
        """Explanation records (schema in docs/ARCHITECTURE.md) for ``queries``, in order.

        Cost: per query, one saliency pass and one ∇θ m pass for its 1-2 labels; one solve (CG
        or LiSSA) for all 1-2 x len(queries) measurements together (only for the rows not in the
        cache, when there is one), one forward-mode pass over the training set for
        those rows (with R > 1 LiSSA repeats, for the R per-repeat solutions too, in the same
        pass), and one pass over W + 1 variants of each distinct top-k example (shared by every
        measurement whose top-k holds it). Eq. 8 and the edits are not cached. Memory with
        R > 1 LiSSA repeats: the R per-repeat solutions, R x Q x P floats, during the solve only
        (the records keep just their top-k overlap; the cache keeps the ``(R, n)`` scores).

        ``record["diagnostics"]`` holds the solve-level values (solver, damping, ...) and, per
        explained label of the record: ``relative_residual``, ``cached`` (read from the cache,
        not solved) and, with LiSSA ``repeat > 1``, ``repeat_relative_spread`` and
        ``topk_overlap`` (mean pairwise Jaccard similarity of the repeats' top-k sets, in [0, 1],
        see :func:`hf_pairdots.stability.topk_overlap`).

        Raises:
            ValueError: a query in which no word can be scored (empty, or every word deleted by
                the tokenizer's normaliser), naming its ``index``, before any work.
            LissaDivergenceError, IndefiniteHessianError, FloatingPointError: from
                :func:`~hf_pairdots.solve.compute_s_test`; nothing is cached then.
        """
        if not queries:
            return []
        bad = skipped_rows(self.tokenizer, [q.text for q in queries], self.args.max_length)
        if bad:
            raise ValueError(f"nothing to explain in query {_first_reasons(bad, [q.index for q in queries])}; "
                             "leave such rows out (explain_dataset skips them)")
        texts = [q.text for q in queries]
        probs = predict_proba(self.model, self.tokenizer, texts, max_length=self.args.max_length)
        with first_position_only(self.model):  # saliency and ∇θ m read the logits only
            rows = self._rows(queries, probs)
            v = self._measurement_gradients(rows)
        solved = self.solve(v)
        k = min(self.args.top_k, solved.scores.shape[1])
        tops = [self._top_k(solved.scores[r], k) for r in range(len(rows))]
        overlap = (topk_overlap([rank_scores(s, self.args.ranking, self.train_gradient_norms)
                                 for s in solved.repeat_scores], k) if solved.repeat_scores is not None else None)
        per_word = self._word_influence(tops, solved.x)
        for r, row in enumerate(tqdm(rows, disable=not self.show_progress, desc="edits" if self.lexicon else "rows")):
            row["top_train"] = self._top_train(tops[r], per_word, r, solved.x[r:r + 1], row["role"])
        records = []
        for i, q in enumerate(queries):
            mine = [row for row in rows if row["query"] == i]
            records.append(self._record(q, probs[i], mine, self._diagnostics(mine, solved, overlap)))
        return records

    @autocast_disabled()
    def solve(self, v: torch.Tensor) -> SolvedRows:
        """s_test and the Eq. 5 scores of every row of ``v`` (``(Q, P)``, rows ∇θ m), cache first.

        Rows whose s_test, scores (and per-repeat scores, with LiSSA repeats) are all in the
        cache are read back bit for bit; the others are solved by one
        :func:`~hf_pairdots.solve.compute_s_test` call over just those rows, scored in one
        training pass, and written to the cache (s_test last, so a present s_test means a whole
        entry). Without ``cache_dir`` every row is solved. Several processes: rank 0 reads the
        cache and broadcasts what it found, every rank solves the same missing rows and keeps
        rank 0's s_test, and only rank 0 writes.

        ``v`` may live on any device; the solve runs on the model's, cached rows are read from
        the CPU and moved there.

        Returns:
            :class:`SolvedRows` (``x`` on the model's device, scores on the CPU).
        """
        v = v.to(self.objective.device)
        q, n, dtype = v.shape[0], self.data.size, v.dtype
        keys = [cache_key("s_test", *self._key_parts, fingerprint_tensor(row)) for row in v] if self.cache else None
        found = [None] * q
        if keys is not None and is_main_process():
            found = [self._lookup(key, v.shape[1], dtype) for key in keys]
        [found] = broadcast_object(found)
        x = torch.empty_like(v)
        scores = torch.empty(q, n, dtype=dtype)
        repeat_scores = torch.empty(self.repeats, q, n, dtype=dtype) if self.repeats else None
        meta = [None] * q
        for r, entry in enumerate(found):
            if entry is not None:
                x[r], meta[r], scores[r] = entry[0].to(x.device), entry[1], entry[2]
                if repeat_scores is not None:
                    repeat_scores[:, r] = entry[3]
        missing = [r for r, entry in enumerate(found) if entry is None]
        if missing:
            options = dataclasses.replace(self.solver, keep_repeats=bool(self.repeats))
            result = compute_s_test(self.objective, self.data, v[missing], options, residual_examples=RESIDUAL_EXAMPLES,
                                    lowrank=self.lowrank, eigenvalues=self.eigenvalues)
            # Several processes: s_test is solved on every rank and rank 0's copy kept, so every rank
            # scores with the same vector; the training pass is split by rank and gathered by id.
            solved = broadcast_tensor(result.x)
            block = [solved]
            if self.repeats:  # (R, M, P) -> (R*M, P): scored in the same training pass as the mean
                block.append(broadcast_tensor(result.diagnostics.pop("repeats")).flatten(0, 1))
            all_scores = sharded_train_influence(self.objective, self.data, torch.cat(block)).cpu()
            m = len(missing)
            x[missing] = solved
            scores[missing] = all_scores[:m]
            if repeat_scores is not None:
                repeat_scores[:, missing] = all_scores[m:].reshape(self.repeats, m, n)
            [fresh] = broadcast_object(_row_metadata(result.diagnostics, m))
            for j, r in enumerate(missing):
                meta[r] = fresh[j]
            if self.cache is not None and is_main_process():
                for r in missing:
                    self.cache.put(cache_key("train_scores", keys[r]), scores[r])
                    if repeat_scores is not None:
                        self.cache.put(cache_key("train_scores_repeats", keys[r]), repeat_scores[:, r])
                    self.cache.put(keys[r], x[r], metadata=meta[r])
        return SolvedRows(x, scores, repeat_scores, meta, [entry is not None for entry in found])

    def _lookup(self, key: str, num_params: int, dtype: torch.dtype):
        """``(s_test (P,), metadata, scores (n,), repeat scores (R, n) or None)`` of one row, or
        ``None`` unless every part is in the cache with the expected shape and dtype."""
        entry = self.cache.get_entry(key)
        needed = {"relative_residual", "solve"} | ({"repeat_relative_spread"} if self.repeats else set())
        if (entry is None or entry[0].shape != (num_params,) or entry[0].dtype != dtype
                or not needed <= set(entry[1])):
            return None
        scores = self.cache.get(cache_key("train_scores", key))
        if scores is None or scores.shape != (self.data.size,):
            return None
        repeat_scores = None
        if self.repeats:
            repeat_scores = self.cache.get(cache_key("train_scores_repeats", key))
            if repeat_scores is None or repeat_scores.shape != (self.repeats, self.data.size):
                return None
        return entry[0], entry[1], scores, repeat_scores

    def _diagnostics(self, rows: list[dict], solved: SolvedRows, overlap: list[float] | None) -> dict:
        """A record's diagnostics: solve-level values, then one entry per explained label."""
        metas = [solved.meta[row["row"]] for row in rows]
        out = dict(metas[0]["solve"])
        if "iterations" in out:  # CG: rows read from the cache may come from different solves
            out["iterations"] = [m["solve"]["iterations"] for m in metas]
        out["relative_residual"] = [m["relative_residual"] for m in metas]
        out["cached"] = [solved.cached[row["row"]] for row in rows]
        if overlap is not None:
            out["repeat_relative_spread"] = [m["repeat_relative_spread"] for m in metas]
            out["topk_overlap"] = [overlap[row["row"]] for row in rows]
        return out

    def _rows(self, queries: Sequence[Query], probs: torch.Tensor) -> list[dict]:
        """One row per (query, explained label): label, role, word saliency (one saliency call
        per query for all its labels: the same text, so no padding)."""
        rows = []
        for i, q in enumerate(queries):
            ranked = probs[i].argsort(descending=True).tolist()
            wrong = ranked[0]
            if self.args.edit == "attack" and wrong == q.gold and len(ranked) > 1:
                wrong = ranked[1]  # y' of Eq. 10 must be a wrong label: the runner-up
            roles = {"predicted": wrong, "gold": q.gold}
            explained = {}  # label -> role, the first role that names it
            for role in self.args.labels:
                if roles[role] is not None:
                    explained.setdefault(roles[role], role)
            if not explained:
                continue
            maps = saliency(self.model, self.tokenizer, [q.text] * len(explained), list(explained),
                            mode=self.args.saliency_mode, target=self.args.saliency_target,
                            max_length=self.args.max_length)
            for (label, role), sal in zip(explained.items(), maps):
                rows.append({"row": len(rows), "query": i, "role": role, "label": label, "saliency": sal,
                             "salient_word": sal.rank(self.args.salient_by)[0], "text": q.text})
        return rows

    def _measurement_gradients(self, rows: list[dict]) -> torch.Tensor:
        """∇θ m of every row, ``(len(rows), P)``: one
        :meth:`~hf_pairdots.loss.TrainLoss.saliency_gradients` call per query for all its
        rows (the same text); with ``salient_by="magnitude"`` a row whose word has a negative
        saliency gets the sign flipped (m = |s(x_t)|)."""
        out = []
        for _, group in itertools.groupby(rows, key=lambda row: row["query"]):
            group = list(group)
            enc, _ = word_encoding(self.tokenizer, [group[0]["text"]], self.args.max_length)
            ids = enc.word_ids(0)
            positions = [[p for p, w in enumerate(ids) if w == row["salient_word"]] for row in group]
            signs = [-1.0 if self.args.salient_by == "magnitude" and row["saliency"].scores[row["salient_word"]] < 0
                     else 1.0 for row in group]
            grads = self.objective.saliency_gradients(dict(enc), [row["label"] for row in group], positions,
                                                      mode=self.args.saliency_mode, target=self.args.saliency_target)
            out.append(grads * torch.tensor(signs, device=grads.device)[:, None])
        return torch.cat(out)

    def _top_k(self, scores: torch.Tensor, k: int):
        """The k first of one row's ``(n,)`` training scores by ``args.ranking``
        (:func:`~hf_pairdots.influence.rank_scores`): ``values`` the raw I(z, m), ``indices`` mapped
        from the kept rows to the rows of ``train_texts`` (:attr:`train_rows`)."""
        positions = torch.topk(rank_scores(scores, self.args.ranking, self.train_gradient_norms), k).indices
        return torch.return_types.topk((scores[positions], torch.as_tensor(self.train_rows)[positions]))

    def _word_influence(self, tops, s_test: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """Eq. 8 scores ``(W,)`` keyed by (row, training index). Each training example's erased
        variants are prepared once per Explainer (one forward pass over W + 1 examples) and
        reused by every row and every later chunk whose top-k holds it: dev errors share many
        responsible examples. Memory: at most N x (W + 1) x H floats (cached-top objectives).
        Training indices are rows of ``train_texts`` (``tops`` from :meth:`_top_k`)."""
        rows_of: dict[int, list[int]] = {}
        for r, top in enumerate(tops):
            for index in top.indices.tolist():
                rows_of.setdefault(index, []).append(r)
        out = {}
        for index, rows in tqdm(rows_of.items(), disable=not self.show_progress, desc="responsible words"):
            if index not in self._variants:
                self._variants[index] = prepare_word_variants(self.objective, self.tokenizer, self.train_texts[index],
                                                              self.train_labels[index], eraser=self.args.eraser,
                                                              max_length=self.args.max_length)
            scores = word_influence(self.objective, self.tokenizer, self.train_texts[index], self.train_labels[index],
                                    s_test[rows], prepared=self._variants[index])
            out.update({(r, index): scores[j] for j, r in enumerate(rows)})
        return out

    def _top_train(self, top, per_word_of: dict, r: int, s_test: torch.Tensor, role: str) -> list[dict]:
        out = []
        edit_top_k = len(top.indices) if self.args.edit_top_k is None else self.args.edit_top_k
        for rank, (influence, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            text, label = self.train_texts[index], self.train_labels[index]
            per_word = per_word_of[(r, index)]
            scored = set(self._variants[index]["word_index"])  # the words Eq. 8 erased (have a token)
            values = per_word.tolist()
            word_scores = [x if t in scored else None for t, x in enumerate(values)]
            entry = {"train_index": index, "text": text, "label": label, "label_name": self.label_names[label],
                     "influence": influence, "words": text.split(), "word_influence": word_scores,
                     "responsible_word": max(sorted(scored), key=values.__getitem__)}
            if self.lexicon is not None and rank < edit_top_k:
                entry["edit"] = self._edit(text, label, s_test, role, per_word, index)
            out.append(entry)
        return out

    def _edit(self, text: str, label: int, s_test: torch.Tensor, role: str, per_word: torch.Tensor,
              index: int) -> dict:
        """The proposed edit of one training example, as a JSON-ready dict (``reason`` when none)."""
        goal = EditGoal.for_role(self.args.edit, role)
        name = goal.name
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + index)
        result = search_edit(self.objective, self.tokenizer, self.lexicon, text, label, s_test, goal,
                             num_sampled=self.args.num_sampled, max_candidates=self.args.max_candidates,
                             generator=generator, eraser=self.args.eraser, max_length=self.args.max_length,
                             word_scores=per_word)
        if result.edit is None:
            return {"objective": name, "reason": result.reason}
        return result.edit.to_record(name)

    def _record(self, query: Query, probs: torch.Tensor, rows: list[dict], diagnostics: dict) -> dict:
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
            "diagnostics": diagnostics,
        }


def _row_metadata(diagnostics: dict, num_rows: int) -> list[dict]:
    """Split a solve's diagnostics into JSON metadata per row: ``relative_residual``, ``solve``
    (the solve-level values) and, with repeats, ``repeat_relative_spread``."""
    solve = {k: diagnostics[k] for k in sorted(diagnostics) if k not in _ROW_DIAGNOSTICS}  # sorted, as read back
    out = []
    for j in range(num_rows):
        row = {"relative_residual": float(diagnostics["relative_residual"][j]), "solve": solve}
        if "repeat_relative_spread_per_query" in diagnostics:
            row["repeat_relative_spread"] = float(diagnostics["repeat_relative_spread_per_query"][j])
        out.append(row)
    return out


def skipped_rows(tokenizer, texts: Sequence[str], max_length: int) -> list[dict]:
    """``[{"index": i, "reason": str}, ...]`` for the texts in which no word can be scored
    (:func:`~hf_pairdots.text.unscorable_texts`): the rows the Explainer leaves out."""
    return [{"index": i, "reason": reason} for i, reason in unscorable_texts(tokenizer, texts, max_length).items()]


def _first_reasons(rows: list[dict], names: Sequence[int] | None = None, limit: int = 3) -> str:
    """"row 0: empty ..., row 4: ..." for the first ``limit`` skipped rows (``names``: the row
    index to print for each position)."""
    shown = [f"row {row['index'] if names is None else names[row['index']]}: {row['reason']}" for row in rows[:limit]]
    return ", ".join(shown) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
