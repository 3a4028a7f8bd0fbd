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

Reuse: with ``SolverArguments.cache_dir`` set, s_test and the Eq. 5
training scores of every measurement row are kept in an :class:`~hf_pairdots.cache.STestCache`
under a key of (model fingerprint, training-data fingerprint, resolved solver options, the
arguments that change s_test, the bytes of the row's ∇θ m). A later :meth:`Explainer.explain`
that meets the same row reads it back instead of solving; only the missing rows of a chunk are
solved, together. Diagnostics say per row whether it came from the
cache, its relative residual, and with LiSSA repeats the top-k overlap across the repeats.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import dataclasses
import functools
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
from .cache import (STestCache, cache_key, fingerprint_model, fingerprint_tensor, fingerprint_texts,
                    fingerprint_tokenizer)
from .distributed import broadcast_object, broadcast_tensor, is_main_process, sharded_train_influence
from .influence import gradient_norms, prepare_word_variants, rank_scores, word_influence
from .errors import UnsupportedModelError
from .loss import make_train_loss, mean_gradient_norm, prepare_data
from .measurement import SaliencyMeasurement, measurement_gradients
from .modeling import (MULTI_LABEL, REGRESSION, SINGLE_LABEL, autocast_disabled, check_labels, find_embedding_block,
                       first_position_only, eval_eager_mode, predict_encoded, prepare_model, problem_type,
                       unwrap_model)
from .problem import THRESHOLD, explained_outputs, prediction
from .modeling import predict_proba  # noqa: F401  (its old home: the name stays importable from here)
from .records import Explanation, LabelExplanation, ProposedEdit, SolveDiagnostics, TrainAttribution
from .saliency import text_saliency
from .constants import KFAC_CURVATURES
from .kfac import fit_kronecker
from .solve import compute_s_test, lowrank_hessian, resolve_damping_scale
from .text import EncodedText, unscorable_texts
from .stability import topk_overlap

RESIDUAL_EXAMPLES = 256
"""Training examples whose Hessian measures each row's relative residual (part of the cache key)."""


@dataclass
class Query:
    """One example to explain: its row ``index`` in the query split, ``text`` and ``gold`` label
    (``None`` when the split has no labels: only the predicted label is explained then): a class
    id, a multi-hot row (multi-label) or a float target (regression).

    ``encoded`` (the text tokenised with the Explainer's ``max_length``) and ``probabilities``
    (``(num_labels,)``, the model's scores on the CPU: :func:`~hf_pairdots.modeling.output_scores`),
    when the caller has them already (query selection computes both), so that
    :meth:`Explainer.explain` neither tokenises the text again nor runs a forward pass for its
    prediction.
    """

    index: int
    text: str
    gold: int | float | list | None
    encoded: EncodedText | None = dataclasses.field(default=None, repr=False, compare=False)
    probabilities: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)


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


def _eval_eager(method):
    """Run an Explainer method with its model in :func:`~hf_pairdots.modeling.eval_eager_mode`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with eval_eager_mode(self.model):
            return method(self, *args, **kwargs)
    return wrapper


class Explainer:
    """Saliency + influence explanations against one training set.

    Args:
        model: the trained classifier, on any one device (its inputs, cached features, Hessian
            products and s_test are put there). Prepared here: unwrapped (DDP, accelerate,
            ``torch.compile``), float32 (a copy of fp16/bf16 weights, kept as :attr:`model`;
            :func:`~hf_pairdots.modeling.prepare_model`), and in eval mode with eager attention
            while construction, :meth:`explain` and :meth:`solve` run
            (:func:`~hf_pairdots.modeling.eval_eager_mode`; its own modes back afterwards).
        tokenizer: its tokenizer.
        train_texts, train_labels: the training set (the Hessian and the candidates); labels as
            the model's loss reads them (class ids, multi-hot rows, float targets). Rows in
            which no word can be scored (empty or whitespace only, or every word deleted by the
            tokenizer's normaliser: the model would see special tokens only) are left out of
            both and listed in :attr:`skipped_train_rows`; records still give every training
            example by its row here (``train_index``), and no skipped row gets a score.
        args: :class:`~hf_pairdots.arguments.ExplainArguments`.
        label_names: names of the labels (default ``model.config.id2label``; none for regression).

    Problem types (``config.problem_type``; :mod:`hf_pairdots.problem`): single-label (the paper),
    multi-label (S_y the sigmoid probability, one record entry per wrong label, BCE training loss)
    and regression with one output (S = the predicted value f(x), one entry per query, MSE).

    Construction, :meth:`explain` and :meth:`solve` run in float32 even inside a caller's
    ``torch.autocast`` region (:func:`~hf_pairdots.modeling.autocast_disabled`).

    Cost of construction: one forward pass over the training set (cached top features) and the
    eigenvalue estimates for automatic damping/scale, or for the definiteness check of a user-set
    damping (except ``solver="exact"``, which checks its explicit Hessian), about 2 x power_iters
    full-data HVPs (:func:`~hf_pairdots.solve.resolve_damping_scale`); with
    ``args.solver.curvature="kfac"`` / ``"ekfac"`` instead the Kronecker factors, fitted once
    (:func:`~hf_pairdots.kfac.fit_kronecker`: one to two forward-and-backward passes over the data);
    with ``args.solver.cache_dir`` also one sha256 pass over the model's weights and the
    training texts (:func:`~hf_pairdots.cache.fingerprint_model`); with ``args.ranking="unit"``
    one per-example gradient pass over the training set
    (:func:`~hf_pairdots.influence.gradient_norms`).

    Cache key of a measurement row (``args.solver.cache_dir`` set): ``cache_key("s_test",
    model fingerprint (θ_S, the rest of the network, config), training-set fingerprint (texts,
    labels, order), tokenizer fingerprint (:func:`~hf_pairdots.cache.fingerprint_tokenizer`), the
    solver options with the *resolved* damping and scale, {params,
    max_length, batch_size, objective, residual_examples}, sha256 of the row's ∇θ m)``. The
    training scores of that row are stored under ``cache_key("train_scores", row key)`` and, with
    LiSSA repeats, the per-repeat scores ``(R, n)`` under ``cache_key("train_scores_repeats", row
    key)``. Anything else that changes ∇θ m (saliency mode, target, the query text, the label)
    changes the row's bytes and so its key. A changed model, training set or argument is a miss,
    never a wrong hit; automatic damping is resolved again by each Explainer (deterministically for
    one machine and thread count), so identical setups share entries.

    Attributes:
        train_gradient_norm: ||∇θ_S of the mean training loss|| at the model's weights
            (:func:`~hf_pairdots.loss.mean_gradient_norm`): about 0 when the model was trained
            to convergence on the loss differentiated.
        train_rows: the rows of ``train_texts`` that are scored, in order (the columns of
            :attr:`SolvedRows.scores` and of the prepared data).
        skipped_train_rows: ``[{"index": row, "reason": str}, ...]``, the rows left out.
        train_gradient_norms: ``(n,)`` ||∇θ L(z)||₂ of the scored rows (CPU) with
            ``args.ranking="unit"``, else ``None``.

    Raises:
        SaliencyError: the model has no embedding block, before any work.
        UnsupportedModelError: a regression model with more than one output, or ``args.edit`` for
            a multi-label or regression model (the edit goals of Sec. 4.2-4.3 are defined for one
            wrong and one gold class), or ``args.suspicious`` for them, before any work.
        ValueError: training labels the model's loss cannot take (wrong shape, a class outside the
            labels, a non-finite target; :func:`~hf_pairdots.modeling.check_labels`), before any pass.
        ValueError: no training row can be scored, before any work.
        IndefiniteHessianError: a user-set ``damping`` leaves H + λI indefinite (a ``ValueError``;
            :func:`~hf_pairdots.ihvp.check_positive_definite`), before any query.
    """

    @autocast_disabled()
    def __init__(self, model: nn.Module, tokenizer, train_texts: Sequence[str], train_labels: Sequence[int],
                 args: ExplainArguments, label_names: Sequence[str] | None = None, show_progress: bool = False):
        model = prepare_model(model)  # unwrapped, float32 (a copy of fp16/bf16 weights)
        with eval_eager_mode(model):  # eval mode, eager attention; the model's own back afterwards
            self._setup(model, tokenizer, train_texts, train_labels, args, label_names, show_progress)

    def _setup(self, model, tokenizer, train_texts, train_labels, args, label_names, show_progress) -> None:
        find_embedding_block(model)  # SaliencyError now rather than after the training-side work
        self.problem_type = kind = problem_type(model)
        check_problem(model, args)
        if kind != SINGLE_LABEL:  # float targets and multi-hot rows: their shape checked before they are read
            check_labels(model, torch.as_tensor(list(train_labels)))
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.train_texts, self.train_labels = list(train_texts), [_label(kind, y) for y in train_labels]
        self.label_names = None if kind == REGRESSION else list(
            label_names or [model.config.id2label[i] for i in range(model.config.num_labels)])
        self.show_progress = show_progress
        self.skipped_train_rows = skipped_rows(tokenizer, self.train_texts, args.max_length)
        skipped = {row["index"] for row in self.skipped_train_rows}
        self.train_rows = [i for i in range(len(self.train_texts)) if i not in skipped]
        if not self.train_rows:
            raise ValueError(f"no training row can be scored ({_first_reasons(self.skipped_train_rows)}); give "
                             "texts with at least one word the tokenizer keeps")
        kept_texts = [self.train_texts[i] for i in self.train_rows]
        kept_labels = [self.train_labels[i] for i in self.train_rows]
        self.objective = make_train_loss(model, args.params, **args.measurement.loss_terms())
        self.data = prepare_data(self.objective, tokenizer, kept_texts, kept_labels, batch_size=args.batch_size,
                                 max_length=args.max_length, rows=self.train_rows)
        self.lexicon = None
        self._variants: dict[int, dict] = {}  # training index -> its Eq. 8 variants, prepared
        if args.edit:
            ensure_wordnet()  # fail before any work
            self.lexicon = Lexicon()
        self.solver, self.eigenvalues = resolve_damping_scale(self.objective, self.data, args.solver)
        self.train_gradient_norm = mean_gradient_norm(self.objective, self.data)  # about 0 at the optimum
        self.lowrank = lowrank_hessian(self.objective, self.data, self.solver) if self.solver.solver == "lowrank" else None
        self.kronecker = (fit_kronecker(self.objective, self.data, self.solver.curvature, self.solver.damping)
                          if self.solver.curvature in KFAC_CURVATURES else None)
        self.train_gradient_norms = gradient_norms(self.objective, self.data) if args.ranking == "unit" else None
        # LiSSA repeats: keep each repeat's s_test for the top-k stability across repeats.
        self.repeats = self.solver.repeat if self.solver.solver == "lissa" and self.solver.repeat > 1 else 0
        self.cache = None
        if self.solver.cache_dir is not None:
            self.cache = STestCache(self.solver.cache_dir)
            self._key_parts = (
                fingerprint_model(model, self.objective.params),
                fingerprint_texts(kept_texts, kept_labels),  # the scored rows: the score columns
                fingerprint_tokenizer(tokenizer),  # the same texts through another tokenizer are other inputs
                self.solver,  # resolved λ and σ; cache_key leaves out keep_repeats and cache_dir
                {"params": args.params, "max_length": args.max_length, "batch_size": args.batch_size,
                 "objective": self.objective.key_name, "residual_examples": RESIDUAL_EXAMPLES,
                 **self.objective.key_terms},  # empty for the plain loss: earlier keys stay valid
            )

    @autocast_disabled()
    @_eval_eager
    def gradient_norms_of(self, train_indices: Sequence[int]) -> dict[int, float]:
        """||∇θ L(z)||₂ over θ_S of the given training rows (``train_index``), by row.

        The loss is the one differentiated (the training loss with its smoothing and weights).
        Cost: preparing those rows (for cached features one forward pass over them) and one
        per-example gradient pass over them (:func:`~hf_pairdots.influence.gradient_norms`); with
        ``ranking="unit"`` the norms computed at construction are read instead.

        Raises:
            ValueError: a row outside the training set or left out of scoring
                (:attr:`skipped_train_rows`), before any pass.
        """
        rows = sorted(set(train_indices))
        position = {row: p for p, row in enumerate(self.train_rows)}
        unscored = [row for row in rows if row not in position]
        if unscored:
            raise ValueError(f"training rows {unscored[:5]} are not scored (outside the training set of "
                             f"{len(self.train_texts)} rows, or in skipped_train_rows)")
        if self.train_gradient_norms is not None:
            return {row: float(self.train_gradient_norms[position[row]]) for row in rows}
        data = prepare_data(self.objective, self.tokenizer, [self.train_texts[i] for i in rows],
                            [self.train_labels[i] for i in rows], batch_size=self.args.batch_size,
                            max_length=self.args.max_length, rows=rows)
        return dict(zip(rows, gradient_norms(self.objective, data).tolist()))

    @autocast_disabled()
    @_eval_eager
    def explain(self, queries: Sequence[Query]) -> list[Explanation]:
        """Explanation records (:class:`~hf_pairdots.records.Explanation`; their ``to_dict()`` is
        the JSON schema of docs/ARCHITECTURE.md) for ``queries``, in order.

        Cost: per query, one saliency pass and one ∇θ m pass for its 1-2 labels; one solve (CG
        or LiSSA) for all 1-2 x len(queries) measurements together (only for the rows not in the
        cache, when there is one), one forward-mode pass over the training set for
        those rows (with R > 1 LiSSA repeats, for the R per-repeat solutions too, in the same
        pass), and one pass over W + 1 variants of each distinct top-k example (shared by every
        measurement whose top-k holds it). Eq. 8 and the edits are not cached. Memory with
        R > 1 LiSSA repeats: the R per-repeat solutions, R x Q x P floats, during the solve only
        (the records keep just their top-k overlap; the cache keeps the ``(R, n)`` scores).

        ``record.diagnostics`` (:class:`~hf_pairdots.records.SolveDiagnostics`) holds the
        solve-level values (``solve``: solver, damping, ...) and, per explained label of the
        record: ``relative_residual``, ``cached`` (read from the cache, not solved) and, with
        LiSSA ``repeat > 1``, ``repeat_relative_spread`` and ``topk_overlap`` (mean pairwise
        Jaccard similarity of the repeats' top-k sets, in [0, 1], see
        :func:`hf_pairdots.stability.topk_overlap`).

        Raises:
            ValueError: a query in which no word can be scored (empty, or every word deleted by
                the tokenizer's normaliser), naming its ``index``, before any work.
            LissaDivergenceError, IndefiniteHessianError, FloatingPointError: from
                :func:`~hf_pairdots.solve.compute_s_test`; nothing is cached then.
        """
        if not queries:
            return []
        encoded = self._encode(queries)
        probs = self._probabilities(queries, encoded)
        with first_position_only(self.model):  # saliency and ∇θ m read the logits only
            rows = self._rows(queries, encoded, probs)
            v = self._measurement_gradients(rows, encoded)
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
            records.append(self._record(q, encoded[i], probs[i], mine, self._diagnostics(mine, solved, overlap)))
        return records

    def _encode(self, queries: Sequence[Query]) -> list[EncodedText]:
        """Each query tokenised once (or as the caller tokenised it: ``Query.encoded``).

        Raises:
            ValueError: a query in which no word can be scored, naming its ``index``.
        """
        encoded = [q.encoded if q.encoded is not None or not q.text.split()
                   else EncodedText.encode(self.tokenizer, q.text, self.args.max_length) for q in queries]
        bad = [i for i, e in enumerate(encoded) if e is None or not e.scored]
        if bad:
            reasons = skipped_rows(self.tokenizer, [queries[i].text for i in bad], self.args.max_length)
            named = [{"index": bad[row["index"]], "reason": row["reason"]} for row in reasons]
            raise ValueError(f"nothing to explain in query {_first_reasons(named, [q.index for q in queries])}; "
                             "leave such rows out (explain_dataset skips them)")
        return encoded

    def _probabilities(self, queries: Sequence[Query], encoded: list[EncodedText]) -> torch.Tensor:
        """``(len(queries), num_labels)`` on the CPU: the queries' own, else one forward pass."""
        missing = [i for i, q in enumerate(queries) if q.probabilities is None]
        probs = torch.empty(len(queries), self.model.config.num_labels)
        for i, q in enumerate(queries):
            if q.probabilities is not None:
                probs[i] = q.probabilities
        if missing:
            probs[missing] = predict_encoded(self.model, self.tokenizer, [encoded[i] for i in missing])
        return probs

    @autocast_disabled()
    @_eval_eager
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
                                    lowrank=self.lowrank, eigenvalues=self.eigenvalues, kronecker=self.kronecker)
            # Several processes: s_test is solved on every rank and rank 0's copy kept, so every rank
            # scores with the same vector; the training pass is split by rank and gathered by id.
            solved = broadcast_tensor(result.x)
            block = [solved]
            if self.repeats:  # (R, M, P) -> (R*M, P): scored in the same training pass as the mean
                block.append(broadcast_tensor(result.repeats).flatten(0, 1))
            all_scores = sharded_train_influence(self.objective, self.data, torch.cat(block)).cpu()
            m = len(missing)
            x[missing] = solved
            scores[missing] = all_scores[:m]
            if repeat_scores is not None:
                repeat_scores[:, missing] = all_scores[m:].reshape(self.repeats, m, n)
            [fresh] = broadcast_object(_row_metadata(result))
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

    def _diagnostics(self, rows: list[dict], solved: SolvedRows, overlap: list[float] | None) -> SolveDiagnostics:
        """A record's diagnostics: solve-level values, then one entry per explained label."""
        metas = [solved.meta[row["row"]] for row in rows]
        solve = dict(metas[0]["solve"])
        if "iterations" in solve:  # CG: rows read from the cache may come from different solves
            solve["iterations"] = [m["solve"]["iterations"] for m in metas]
        out = SolveDiagnostics(solve, relative_residual=[m["relative_residual"] for m in metas],
                               cached=[solved.cached[row["row"]] for row in rows])
        if overlap is not None:
            out.repeat_relative_spread = [m["repeat_relative_spread"] for m in metas]
            out.topk_overlap = [overlap[row["row"]] for row in rows]
        return out

    def _rows(self, queries: Sequence[Query], encoded: list[EncodedText], probs: torch.Tensor) -> list[dict]:
        """One row per (query, explained label): label, role, word saliency (one saliency call
        per query for all its labels: the same text, so no padding)."""
        rows = []
        for i, q in enumerate(queries):
            # label -> role (problem.explained_outputs: y' and y; the wrong labels; the one output)
            explained = explained_outputs(self.problem_type, probs[i], q.gold, self.args.labels,
                                          attack=self.args.edit == "attack")
            if not explained:
                continue
            maps = text_saliency(self.model, encoded[i], list(explained), mode=self.args.saliency_mode,
                                 target=self.args.saliency_target, eraser=self.args.eraser)
            for (label, role), sal in zip(explained.items(), maps):
                rows.append({"row": len(rows), "query": i, "role": role, "label": label, "saliency": sal,
                             "salient_word": sal.rank(self.args.salient_by)[0]})
        return rows

    def _measurement_gradients(self, rows: list[dict], encoded: list[EncodedText]) -> torch.Tensor:
        """∇θ m of every row, ``(len(rows), P)``: one
        :func:`~hf_pairdots.measurement.measurement_gradients` call per query for all its rows
        (the same text); with ``salient_by="magnitude"`` a row whose word has a negative
        saliency measures its negative (m = |s(x_t)|)."""
        out = []
        for query, group in itertools.groupby(rows, key=lambda row: row["query"]):
            # the saliency's own mode: grad_x_input where "gradient" is degenerate (pre-LayerNorm models)
            measurements = [SaliencyMeasurement(
                row["label"], row["salient_word"], row["saliency"].mode, self.args.saliency_target,
                -1.0 if self.args.salient_by == "magnitude" and row["saliency"].scores[row["salient_word"]] < 0 else 1.0,
                self.args.eraser)
                for row in group]
            out.append(measurement_gradients(self.objective, encoded[query], measurements))
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

    def _top_train(self, top, per_word_of: dict, r: int, s_test: torch.Tensor, role: str) -> list[TrainAttribution]:
        out = []
        edit_top_k = len(top.indices) if self.args.edit_top_k is None else self.args.edit_top_k
        for rank, (influence, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            text, label = self.train_texts[index], self.train_labels[index]
            per_word = per_word_of[(r, index)]
            scored = set(self._variants[index]["word_index"])  # the words Eq. 8 erased (have a token)
            values = per_word.tolist()
            word_scores = [x if t in scored else None for t, x in enumerate(values)]
            entry = TrainAttribution(index, text, label, self._names(label), influence, text.split(), word_scores,
                                     responsible_word=max(sorted(scored), key=values.__getitem__))
            if self.lexicon is not None and rank < edit_top_k:
                entry.edit = self._edit(text, label, s_test, role, per_word, index)
            out.append(entry)
        return out

    def _edit(self, text: str, label: int, s_test: torch.Tensor, role: str, per_word: torch.Tensor,
              index: int) -> ProposedEdit:
        """The proposed edit of one training example (``reason`` when none)."""
        goal = EditGoal.for_role(self.args.edit, role)
        name = goal.name
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + index)
        result = search_edit(self.objective, self.tokenizer, self.lexicon, text, label, s_test, goal,
                             num_sampled=self.args.num_sampled, max_candidates=self.args.max_candidates,
                             generator=generator, eraser=self.args.eraser, max_length=self.args.max_length,
                             word_scores=per_word)
        if result.edit is None:
            return ProposedEdit(objective=name, reason=result.reason)
        return result.edit.to_proposed(name)

    def _record(self, query: Query, encoded: EncodedText, probs: torch.Tensor, rows: list[dict],
                diagnostics: SolveDiagnostics) -> Explanation:
        predicted = prediction(self.problem_type, probs)
        names = self.label_names
        labels = [LabelExplanation(row["label"], None if names is None else names[row["label"]], row["role"],
                                   row["saliency"].probability, row["saliency"].scores, row["salient_word"],
                                   row["top_train"]) for row in rows]
        return Explanation(query.index, query.text, _label(self.problem_type, query.gold),
                           None if query.gold is None else self._names(query.gold), predicted,
                           self._names(predicted), None if self.problem_type == REGRESSION else probs.tolist(),
                           encoded.words, encoded.truncated, labels, diagnostics, self.problem_type)

    def _names(self, label):
        """The name of a class id, the names of a multi-hot row's labels, ``None`` for a regression value."""
        if self.problem_type == REGRESSION:
            return None
        if self.problem_type == MULTI_LABEL:
            return [self.label_names[y] for y, on in enumerate(label) if float(on) >= THRESHOLD]
        return self.label_names[label]


def check_problem(model: nn.Module, args: ExplainArguments) -> None:
    """Refuse what the Explainer cannot explain for the model's ``config.problem_type``, before any
    work: regression with several outputs (a record explains one value), and edits or suspicious
    examples for multi-label or regression models (defined for one wrong and one gold class).

    Raises:
        UnsupportedModelError: naming the option or the number of outputs.
    """
    kind, outputs = problem_type(model), unwrap_model(model).config.num_labels
    if kind == REGRESSION and outputs != 1:
        raise UnsupportedModelError(f"problem_type='regression' with num_labels={outputs}: the "
                                    "Explainer explains one predicted value per query (num_labels=1); explain each "
                                    "output with hf_pairdots.saliency.saliency and a SaliencyMeasurement instead")
    if kind != SINGLE_LABEL:
        for option, value in (("edit", args.edit), ("suspicious", args.suspicious)):
            if value:
                raise UnsupportedModelError(
                    f"ExplainArguments.{option}={value!r} is defined for single-label classifiers (one wrong and one "
                    f"gold class); this model has problem_type={kind!r}: leave {option} unset")


def _label(kind: str, label):
    """A label as records hold it: ``int`` class id, ``float`` target, multi-hot ``list`` (ints where
    the values are whole), ``None`` kept."""
    if label is None:
        return None
    if kind == SINGLE_LABEL:
        return int(label)
    if kind == REGRESSION:
        return float(label.item() if isinstance(label, torch.Tensor) and label.numel() == 1 else label)
    row = label.tolist() if isinstance(label, torch.Tensor) else list(label)
    return [int(v) if float(v).is_integer() else float(v) for v in row]


def _row_metadata(result) -> list[dict]:
    """Split a solve's :class:`~hf_pairdots.ihvp.IHVPResult` into JSON metadata per row:
    ``relative_residual``, ``solve`` (the solve-level values, keys sorted as the cache reads
    them back) and, with repeats, ``repeat_relative_spread``."""
    solve = {k: result.diagnostics[k] for k in sorted(result.diagnostics)}
    out = []
    for j, residual in enumerate(result.relative_residual):
        row = {"relative_residual": float(residual), "solve": solve}
        if result.repeat_relative_spread is not None:
            row["repeat_relative_spread"] = float(result.repeat_relative_spread[j])
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
