"""The Trainer-free pipeline: explain a dataset into an output folder, and turn explanations into
an augmented training set (Sec. 4.1-4.3 of Meng et al., 2020).

* :func:`select_queries`: which rows of the query split are explained (dev errors by default);
* :func:`explain_dataset`: the selected queries explained against the training set, resumably,
  into ``explanations.jsonl``, ``explanations/``, ``report.html``, ``explain_args.json`` and
  ``meta.json`` (what :class:`~hf_pairdots.callback.PairDotsCallback` writes at train end, and
  ``pairdots explain``). Before appending to a folder that already holds explanations, the saved
  options are compared with the new ones (:func:`resume_mismatch`): a difference raises
  :class:`~hf_pairdots.errors.IncompatibleRunError` before any model work, instead of mixing
  two runs' records;
* :func:`find_suspicious`: the training examples of largest self-influence (``suspicious.json``);
* :func:`edit_arguments` (with the one ``top_k`` rule, :func:`edit_top_k`),
  :func:`augment_training_set` (explain with edits, collect, apply) and
  :func:`apply_explanations` (collect and apply only): the edit pipeline of ``pairdots augment``
  and the recipes.

Everything here works on typed records (:mod:`hf_pairdots.records`); JSON is read and written at
the store (:class:`~hf_pairdots.report.ExplanationStore`) only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .arguments import PREDATES, ExplainArguments
from .augment.dataset import EditCollection, apply_edits, collect_edits, explain_labels, explain_mode
from .distributed import broadcast_object, is_distributed, is_main_process
from .errors import IncompatibleRunError
from .explain import Explainer, Query, check_problem, skipped_rows
from .hubs import find_hub
from .influence import mean_loss_gradient, self_influence, tail_disagreement, train_influence
from .loss import make_train_loss, prepare_data
from .modeling import REGRESSION, SINGLE_LABEL, influence_mode, predict_encoded, problem_type
from .problem import gold_problem, is_error, regression_errors
from .records import Explanation
from .report import JSONL_NAME, ExplanationStore, atomic_write_text, write_dataset, write_report
from .solve import compute_s_test
from .text import EncodedText, unscorable_texts

__all__ = [
    "ARGS_NAME",
    "META_NAME",
    "RESUME_FREE_OPTIONS",
    "SUSPICIOUS_NAME",
    "AugmentedTrainingSet",
    "apply_explanations",
    "augment_training_set",
    "edit_arguments",
    "edit_top_k",
    "explain_dataset",
    "find_suspicious",
    "resume_mismatch",
    "select_queries",
]

META_NAME = "meta.json"
SUSPICIOUS_NAME = "suspicious.json"
ARGS_NAME = "explain_args.json"

RESUME_FREE_OPTIONS = ("max_queries", "output_subdir", "suspicious", "suspicious_params", "solver.cache_dir")
"""Options (dotted for the solver's) that may change between runs appending to one folder: how many
queries, where the folder is, the suspicious-examples section (rewritten every run) and the s_test
cache (a hit gives the same bits). Every other option changes the records."""

logger = logging.getLogger(__name__)


def select_queries(texts, golds, probs, args: ExplainArguments, unscorable: dict[int, str] | None = None,
                   encoded: dict[int, EncodedText] | None = None,
                   kind: str = SINGLE_LABEL) -> tuple[list[Query], list[dict]]:
    """Queries to explain and the rows skipped with their reason.

    ``probs`` ``(N, num_labels)``: the model's scores of every text (probabilities; predicted
    values for regression: :func:`~hf_pairdots.modeling.output_scores`), which the queries
    carry (``Query.probabilities``: not predicted again); ``encoded``: ``{row: EncodedText}``,
    the texts tokenised with ``args.max_length``, which they carry too (not tokenised again).

    Skips the rows of ``unscorable`` (``{row: reason}``: texts in which no word can be scored,
    see :func:`~hf_pairdots.text.unscorable_texts`; default: the empty/whitespace texts)
    and gold labels the model's outputs cannot be compared with (reason given,
    :func:`~hf_pairdots.problem.gold_problem`);
    ``None`` gold (unlabelled data) is kept and only the predicted label is explained. An
    unlabelled row is never misclassified: with ``queries="misclassified"`` it is not selected
    (an unlabelled split gives 0 queries; use ``"all"`` or ``"indices"``).

    ``kind`` (the model's ``config.problem_type``) says what misclassified means
    (:mod:`hf_pairdots.problem`): argmax != gold; a multi-label row with some label wrong at
    threshold 0.5; for regression the rows whose |prediction - target| exceeds the split's
    root-mean-square error, the ``max_queries`` largest (:func:`~hf_pairdots.problem.regression_errors`).
    """
    num_labels = probs.shape[1] if len(probs) else 0
    chosen, skipped = [], []
    rows = args.query_indices if args.queries == "indices" else range(len(texts))
    if unscorable is None:
        unscorable = {i: "empty or whitespace-only text" for i, text in enumerate(texts) if not text.strip()}
    kept = []
    for i in rows:
        gold = golds[i]
        reason = unscorable.get(i) or gold_problem(kind, gold, num_labels)
        if reason is not None:
            skipped.append({"index": i, "reason": reason})
        else:
            kept.append(i)
    if args.queries != "misclassified":
        picked = kept
    elif kind == REGRESSION:
        picked = regression_errors(probs[:, 0], golds, [i for i in kept if golds[i] is not None], args.max_queries)
    else:
        picked = [i for i in kept if golds[i] is not None and is_error(kind, probs[i], golds[i])]
    chosen = [Query(i, texts[i], golds[i], (encoded or {}).get(i), probs[i]) for i in picked]
    return chosen[:args.max_queries], skipped


RANKING_NOTES = {
    "raw": "raw: top-k by Eq. 5's influence I(z, m)",
    "unit": "unit: top-k by I(z, m) / ||∇θ L(z)||, unit-normalised training gradients; "
            "the influence shown is Eq. 5's I(z, m)",
}
"""How the report and meta.json say which ``ranking`` ordered the top-k (the influence a record
shows is always the raw I(z, m), so under ``"unit"`` it need not decrease with the rank)."""


def encode_queries(tokenizer, texts, max_length: int) -> tuple[dict[int, EncodedText], dict[int, str]]:
    """Every text of a query split tokenised once: ``({row: EncodedText}, {row: reason})``, the
    second for the rows in which no word can be scored (empty, every word deleted by the
    tokenizer's normaliser, or no room within ``max_length``: the reasons of
    :func:`~hf_pairdots.text.unscorable_texts`). Cost: one encoding of each text."""
    rows = [i for i, text in enumerate(texts) if text.split()]
    encoded = dict(zip(rows, EncodedText.encode_many(tokenizer, [texts[i] for i in rows], max_length, rows=rows)))
    bad = [i for i in range(len(texts)) if i not in encoded or not encoded[i].scored]
    reasons = unscorable_texts(tokenizer, [texts[i] for i in bad], max_length)
    unscorable = {bad[j]: reason for j, reason in reasons.items()}
    return {i: e for i, e in encoded.items() if i not in unscorable}, unscorable


def _flat(options: dict, prefix: str = "") -> dict:
    """``{"solver": {"depth": 200}}`` -> ``{"solver.depth": 200}``."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def resume_mismatch(out: str | Path, args: ExplainArguments) -> dict[str, tuple]:
    """The options in which ``args`` differs from the run whose explanations ``out`` holds.

    ``{option: (saved value, new value)}``, options dotted (``"solver.depth"``), the
    :data:`RESUME_FREE_OPTIONS` left out; an option missing from an older ``explain_args.json``
    counts as the value it was made with (:data:`~hf_pairdots.arguments.PREDATES`, else the
    default). Empty when ``out`` holds no explanations (no ``explanations.jsonl``
    or an empty one) or no saved options to compare with. Cost: two small JSON reads.
    """
    out = Path(out)
    saved_path, records = out / ARGS_NAME, out / JSONL_NAME
    if not saved_path.is_file() or not records.is_file() or records.stat().st_size == 0:
        return {}
    saved = _flat(json.loads(saved_path.read_text()))
    current = _flat(json.loads(args.to_json()))  # through JSON: tuples and lists compare equal
    default = _flat(json.loads(ExplainArguments().to_json()))
    names = sorted((set(saved) | set(current)) - set(RESUME_FREE_OPTIONS))
    old = {**default, **PREDATES}  # a saved file without an option was made with its value then
    pairs = {name: (saved.get(name, old.get(name)), current.get(name, default.get(name))) for name in names}
    return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


def _check_resumable(out: Path, args: ExplainArguments) -> None:
    """Raise :class:`IncompatibleRunError` on every rank when rank 0 finds :func:`resume_mismatch`."""
    message = None
    if is_main_process():
        differ = resume_mismatch(out, args)
        if differ:
            listed = "; ".join(f"{name}: saved {old!r}, now {new!r}" for name, (old, new) in differ.items())
            message = (f"{out} already holds explanations made with other options ({listed}); appending would mix "
                       f"two runs. Rerun with the options saved in {out / ARGS_NAME}, or choose another output "
                       "folder")
    if is_distributed():
        [message] = broadcast_object(message)
    if message is not None:
        raise IncompatibleRunError(message)


def explain_dataset(model, tokenizer, train, queries_ds, args: ExplainArguments, out: str | Path, *,
                    chunk_size: int = 8, show_progress: bool = False, meta: dict | None = None) -> dict:
    """Explain the selected rows of ``queries_ds`` against ``train``, resumably, into ``out``.

    Finished queries (already in ``explanations.jsonl``) are skipped; the rest are explained in
    chunks of ``chunk_size`` queries, each chunk appended as soon as it is done. The model is
    used through :func:`~hf_pairdots.modeling.influence_mode` (float32, eval, unwrapped; its
    mode is restored; gradient-checkpointing hooks suspended; a DDP or accelerate wrapper is
    stripped). ``queries_ds`` without a ``label`` column is unlabelled: ``queries="all"``
    explains the predicted label only, ``"misclassified"`` selects nothing. ``meta`` (e.g. the
    step and checkpoint of the weights) is written with the summary to ``meta.json`` and shown in
    the report. Returns a summary: number of queries, skipped rows, mean top-1 influence, seconds.

    Rows in which no word can be scored (empty or whitespace only, or every word deleted by the
    tokenizer's normaliser) are skipped with their reason: query rows in ``meta.json``'s
    ``skipped_rows`` (and the summary's ``skipped``), training rows in ``skipped_train_rows``
    (present when there are any; left out of the Hessian and the candidates, see
    :class:`~hf_pairdots.explain.Explainer`). Both are shown in the report's header table.

    When one training example is in the top-k of more than 10 % of at least 10 explained rows
    (a *hub*, :func:`~hf_pairdots.hubs.find_hub`), ``meta.json``'s ``"hub"`` names it, with its
    training-gradient norm against the median of the listed examples' (computed for those examples
    only, when an Explainer ran in this call), the report shows the warning, and it is logged.

    With ``args.suspicious > 0`` it also writes ``suspicious.json``, the training examples with
    the largest self-influence (:func:`find_suspicious`, on rank 0), puts their diagnostics
    under ``meta.json``'s ``"suspicious"`` (a ``"warning"`` there when the dev-loss influence
    ranking disagrees) and adds a section to the report; with the default 0 nothing changes.

    Under ``torch.distributed`` (several processes) call it on every rank: rank 0 decides what
    is pending and alone writes; the other ranks score their shard of the training set and
    return rank 0's summary.

    Raises:
        IncompatibleRunError: ``out`` already holds explanations made with other options
            (:func:`resume_mismatch`; the message names each differing option, saved and new
            value), before the model is touched.
        UnsupportedModelError: options the model's problem type does not support
            (:func:`~hf_pairdots.explain.check_problem`), before the model is touched.
    """
    _check_resumable(Path(out), args)
    check_problem(model, args)
    with influence_mode(model) as model:
        return _explain_dataset(model, tokenizer, train, queries_ds, args, Path(out), chunk_size, show_progress,
                                meta or {})


def _explain_dataset(model, tokenizer, train, queries_ds, args, out: Path, chunk_size, show_progress, meta) -> dict:
    start = time.perf_counter()
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        args.to_json(out / ARGS_NAME)
    store = ExplanationStore(out) if main else None
    texts = list(queries_ds["text"])
    golds = list(queries_ds["label"]) if "label" in queries_ds.column_names else [None] * len(texts)
    encoded, unscorable = encode_queries(tokenizer, texts, args.max_length)
    probs = torch.zeros(len(texts), model.config.num_labels)
    if encoded:
        probs[list(encoded)] = predict_encoded(model, tokenizer, list(encoded.values()), batch_size=args.batch_size,
                                               show_progress=show_progress)
    queries, skipped = select_queries(texts, golds, probs, args, unscorable, encoded, problem_type(model))
    pending = [q for q in queries if q.index not in store.done_indices()] if main else []
    if is_distributed():  # rank 0's store decides; every rank must run the same chunks
        [pending_indices] = broadcast_object([q.index for q in pending])
        pending = [q for q in queries if q.index in set(pending_indices)]
    explainer = None
    if pending:
        explainer = Explainer(model, tokenizer, train["text"], train["label"], args,
                              show_progress=show_progress and main)
        for begin in range(0, len(pending), chunk_size):
            for record in explainer.explain(pending[begin:begin + chunk_size]):
                if main:
                    store.append(record)
    if not main:
        return broadcast_object(None)[0]
    selected = {q.index for q in queries}
    records = [r for r in store.explanations() if r.query_index in selected]
    write_dataset(records, out / "explanations")
    top1 = [entry.top_train[0].influence for r in records for entry in r.labels if entry.top_train]
    summary = {"queries": len(records), "skipped": len(skipped),
               "mean_top1_influence": sum(top1) / len(top1) if top1 else None,
               "seconds": round(time.perf_counter() - start, 1)}
    skipped_train = (explainer.skipped_train_rows if explainer is not None
                     else skipped_rows(tokenizer, list(train["text"]), args.max_length))
    full_meta = {**meta, **summary, "ranking": RANKING_NOTES[args.ranking], "skipped_rows": skipped,
                 "train_size": len(train), **({"skipped_train_rows": skipped_train} if skipped_train else {})}
    hub = _hub(records, explainer, args.ranking)
    if hub is not None:
        full_meta["hub"] = hub
    suspicious = None
    if args.suspicious:
        suspicious = _write_suspicious(model, tokenizer, train, queries_ds, args, out, full_meta)
    atomic_write_text(out / META_NAME, json.dumps(full_meta, indent=2, default=str) + "\n")
    write_report(out, records, full_meta, suspicious)
    if is_distributed():
        broadcast_object(summary)
    return summary


def _hub(records: list[Explanation], explainer: Explainer | None, ranking: str) -> dict | None:
    """``meta.json``'s ``"hub"`` (:func:`~hf_pairdots.hubs.find_hub` over the records' top-k
    lists, with the training-gradient norms of the listed examples when an Explainer was built in
    this call), logged as a warning; ``None`` when no example is a hub."""
    top_lists = [[t.train_index for t in entry.top_train] for r in records for entry in r.labels]
    hub = find_hub(top_lists)
    if hub is None:
        return None
    if explainer is not None:
        hub = hub.with_norms(explainer.gradient_norms_of({i for top in top_lists for i in top}))
    logger.warning("Hub: %s", hub.message(ranking))
    return hub.to_dict(ranking)


def find_suspicious(model, tokenizer, train, queries_ds, args: ExplainArguments) -> tuple[list[dict], dict]:
    """The ``args.suspicious`` training examples the model finds most suspicious, and a check of
    the dev-loss influence ranking against them.

    Suspicion is self-influence ∇θL(z)ᵀ(H + λI)⁻¹∇θL(z) ≥ 0 over ``args.suspicious_params``
    (:func:`~hf_pairdots.influence.self_influence`; ``args.solver``, exact for a small θ_S),
    for every training row in which a word can be scored (the others are left out, as by the
    Explainer). The check: the influence of every training row on the mean loss of the labelled,
    scorable rows of ``queries_ds`` (Koh & Liang's I_up,loss over ``args.params``, one solve),
    compared with the self-influence by :func:`~hf_pairdots.influence.tail_disagreement`
    (deciles). When that says ``disagree`` (the most suspicious examples sit significantly more
    in the helpful tail of the dev-loss ranking than in its harmful tail), the diagnostics get a
    ``warning``, which is also logged.

    The model is used through :func:`~hf_pairdots.modeling.influence_mode`. Cost: a forward
    pass over the training set per θ_S and one over the query split, the self-influence (see
    :func:`~hf_pairdots.influence.self_influence`: one explicit Hessian for ``"classifier"``)
    and one dev-loss solve with its eigenvalue estimates.

    Returns:
        ``(examples, diagnostics)``. ``examples``, most suspicious first: ``{"rank", "train_index"
        (row of ``train``), "text", "label", "label_name", "self_influence"}``. ``diagnostics``:
        ``count``, ``params``, ``solver``, ``damping``, ``max_relative_residual``, ``dev_loss``
        (the :func:`~hf_pairdots.influence.tail_disagreement` result, or ``{"skipped": reason}``),
        ``seconds`` and, when the rankings disagree, ``warning``.

    Raises:
        ValueError: no training row can be scored.
    """
    start = time.perf_counter()
    with influence_mode(model) as model:
        texts, labels = list(train["text"]), [int(y) for y in train["label"]]
        skipped = {row["index"] for row in skipped_rows(tokenizer, texts, args.max_length)}
        rows = [i for i in range(len(texts)) if i not in skipped]
        if not rows:
            raise ValueError("find_suspicious: no training row can be scored (all are empty or lose every word "
                             "to the tokenizer); give a training set with text")
        kept = ([texts[i] for i in rows], [labels[i] for i in rows])
        objective = make_train_loss(model, args.suspicious_params, **args.measurement.loss_terms())
        data = prepare_data(objective, tokenizer, *kept, batch_size=args.batch_size, max_length=args.max_length)
        result = self_influence(objective, data, args.solver)
        top = torch.topk(result.scores, min(args.suspicious, len(rows)))
        names = model.config.id2label
        examples = [{"rank": rank, "train_index": rows[j], "text": texts[rows[j]], "label": labels[rows[j]],
                     "label_name": names[labels[rows[j]]], "self_influence": float(score)}
                    for rank, (score, j) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1)]
        dev_loss = _dev_loss_disagreement(model, tokenizer, kept, queries_ds, args, result.scores)
    diagnostics = {"count": len(examples), "params": args.suspicious_params, "solver": result.diagnostics["solver"],
                   "damping": result.diagnostics["damping"],
                   "max_relative_residual": result.diagnostics["max_relative_residual"], "dev_loss": dev_loss,
                   "seconds": round(time.perf_counter() - start, 1)}
    if dev_loss.get("disagree"):
        diagnostics["warning"] = (
            f"the top {dev_loss['fraction']:.0%} of training examples by self-influence lie more in the helpful "
            f"tail of the influence on the query split's loss ({dev_loss['in_helpful']:.0%} of its most helpful "
            f"{dev_loss['fraction']:.0%}) than in its harmful tail ({dev_loss['in_harmful']:.0%}; z = "
            f"{dev_loss['z']:.1f}, chance {dev_loss['chance']:.0%}): ranking training examples by dev-loss "
            f"influence would not surface them; review the examples in {SUSPICIOUS_NAME}")
        logger.warning("PairDots: %s", diagnostics["warning"])
    return examples, diagnostics


def _dev_loss_disagreement(model, tokenizer, train: tuple[list, list], queries_ds, args, self_scores) -> dict:
    """:func:`tail_disagreement` of ``self_scores`` against the influence on the query split's mean loss."""
    if "label" not in queries_ds.column_names:
        return {"skipped": "the query split has no labels to take a loss on"}
    texts, golds = list(queries_ds["text"]), list(queries_ds["label"])
    skipped = {row["index"] for row in skipped_rows(tokenizer, texts, args.max_length)}
    dev = [i for i, gold in enumerate(golds)
           if i not in skipped and gold is not None and 0 <= gold < model.config.num_labels]
    if not dev or len(train[0]) < 2:
        return {"skipped": "fewer than 2 training rows or no labelled, scorable query row"}
    objective = make_train_loss(model, args.params, **args.measurement.loss_terms())
    data = prepare_data(objective, tokenizer, *train, batch_size=args.batch_size, max_length=args.max_length)
    dev_data = prepare_data(objective, tokenizer, [texts[i] for i in dev], [golds[i] for i in dev],
                            batch_size=args.batch_size, max_length=args.max_length)
    solved = compute_s_test(objective, data, mean_loss_gradient(objective, dev_data)[None], args.solver)
    return tail_disagreement(self_scores, train_influence(objective, data, solved.x)[0])


def _write_suspicious(model, tokenizer, train, queries_ds, args, out: Path, meta: dict) -> list[dict]:
    """:func:`find_suspicious` into ``out/suspicious.json``; its diagnostics go to ``meta["suspicious"]``."""
    examples, meta["suspicious"] = find_suspicious(model, tokenizer, train, queries_ds, args)
    atomic_write_text(out / SUSPICIOUS_NAME, json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    return examples


def edit_top_k(objective: str, per_query: int) -> int:
    """Training examples to explain (and propose edits for) per label row, so that
    :func:`~hf_pairdots.augment.dataset.collect_edits` finds ``per_query`` edits per query.

    ``2 x per_query + 3`` for attacks (a training row is replaced at most once, so a query may
    lose candidates to the queries before it), ``per_query + 2`` for fixing (a search may find no
    substitute). The one rule of ``pairdots augment`` and the recipes.

    Raises:
        ValueError: ``objective`` is not a key of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS`.
    """
    return 2 * per_query + 3 if explain_mode(objective) == "attack" else per_query + 2


def edit_arguments(objective: str, per_query: int, base: ExplainArguments | None = None, *,
                   top_k: int | None = None) -> ExplainArguments:
    """``base`` (default ``ExplainArguments()``) set up to propose the edits of ``objective``:
    ``edit`` its mode, ``labels`` its roles (gold first), ``top_k`` given or :func:`edit_top_k`.

    Raises:
        ValueError: unknown ``objective``; ``per_query`` < 1; the options' own checks.
    """
    if per_query < 1:
        raise ValueError(f"per_query={per_query}: must be >= 1")
    return dataclasses.replace(base or ExplainArguments(), edit=explain_mode(objective),
                               labels=explain_labels(objective), top_k=top_k or edit_top_k(objective, per_query))


@dataclass
class AugmentedTrainingSet:
    """What :func:`augment_training_set` made.

    Attributes:
        explanations: the typed records the edits came from, by ``query_index``.
        edits: :class:`~hf_pairdots.augment.dataset.EditCollection` (the edited examples with
            provenance, and the queries short of edits with why).
        dataset: the training set with the edits applied (fix: rows added; attack: rows replaced).
        args: the options the queries were explained with.
        summary: :func:`explain_dataset`'s summary.
    """

    explanations: list[Explanation]
    edits: EditCollection
    dataset: datasets.Dataset
    args: ExplainArguments
    summary: dict


def apply_explanations(explanations: Iterable[Explanation | dict], train: datasets.Dataset, objective: str, *,
                       per_query: int, seed: int = 0,
                       antonym_label: str = "keep") -> tuple[EditCollection, datasets.Dataset]:
    """``(edits, training set with them applied)``: :func:`~hf_pairdots.augment.dataset.collect_edits`
    of up to ``per_query`` edits per query, then :func:`~hf_pairdots.augment.dataset.apply_edits`.

    ``explanations`` must have been made with :func:`edit_arguments` for ``objective`` (or one
    of its group's modes and labels) against ``train``; ``seed``: the search seed, recorded with
    every edit. Cost: one pass over the records and one copy of ``train``.

    Raises:
        ValueError, TypeError: as :func:`~hf_pairdots.augment.dataset.collect_edits` and
            :func:`~hf_pairdots.augment.dataset.apply_edits`.
    """
    edits = collect_edits(explanations, train, objective, per_query=per_query, seed=seed, antonym_label=antonym_label)
    return edits, apply_edits(train, edits.dataset)


def augment_training_set(model, tokenizer, train: datasets.Dataset, queries_ds: datasets.Dataset, out: str | Path, *,
                         objective: str, per_query: int, args: ExplainArguments | None = None,
                         top_k: int | None = None, antonym_label: str = "keep", show_progress: bool = False,
                         meta: dict | None = None) -> AugmentedTrainingSet:
    """Explanations turned into an augmented training set (Sec. 4.2-4.3): explain the selected
    queries with the edit search of ``objective`` (:func:`explain_dataset` into ``out``,
    resumable, options from :func:`edit_arguments` over ``args``), collect up to ``per_query``
    edits per query and apply them (:func:`apply_explanations`, search seed ``args.seed``).

    The explanations are the first ``args.max_queries`` stored in ``out`` by ``query_index``.
    Cost: that of :func:`explain_dataset` with edits (a two-stage search per top-k example),
    then one pass over the records.

    Raises:
        IncompatibleRunError: ``out`` holds explanations made with other options.
        ValueError: unknown ``objective``, ``per_query`` < 1, or as :func:`apply_explanations`.
    """
    args = edit_arguments(objective, per_query, args, top_k=top_k)
    summary = explain_dataset(model, tokenizer, train, queries_ds, args, out, show_progress=show_progress, meta=meta)
    explanations = ExplanationStore(out).explanations()[:args.max_queries]
    edits, dataset = apply_explanations(explanations, train, objective, per_query=per_query, seed=args.seed,
                                        antonym_label=antonym_label)
    return AugmentedTrainingSet(explanations, edits, dataset, args, summary)
