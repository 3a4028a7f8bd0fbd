"""PairDotsCallback: explain the dev errors of a ``transformers.Trainer`` when training ends.

Add it to an existing Trainer, either bound (the summary reaches ``report_to`` integrations)::

    trainer = Trainer(model, args, train_dataset=train_tok, eval_dataset=dev_tok, processing_class=tok)
    PairDotsCallback.attach(trainer, dev, train_dataset=train)

or as a plain callback (the summary goes to ``trainer.state.log_history`` and the Python logger
only; a ``TrainerCallback`` is never handed the Trainer, so it cannot call ``Trainer.log``)::

    trainer = Trainer(..., callbacks=[PairDotsCallback(dev, train_dataset=train)])

At ``on_train_end`` (and, with ``on_evaluate=True``, after each evaluation) the callback
predicts the query split, selects the queries (dev misclassifications by default), and writes
under ``<output_dir>/<output_subdir>/``: ``explanations.jsonl`` (resumable: finished queries are
skipped on a rerun), ``explanations/`` (the same as a ``datasets.Dataset``), ``report.html``,
``explain_args.json`` and ``meta.json`` (which weights were explained: ``global_step`` and
``best_model_checkpoint``; the summary; the skipped rows and why). It only reads the model
(float32 copy for fp16/bf16 training, eval mode, mode restored afterwards), changes nothing but
``control``, and writes on the main process only. With several processes (``accelerate launch``)
every rank takes part in the explanation (the pass over the training set is split by rank and
gathered by id, :mod:`hf_pairdots.distributed`) and rank 0 alone writes. The model the Trainer
hands to callbacks may be DDP-wrapped; :func:`~hf_pairdots.modeling.influence_mode` unwraps it.

The summary (``pairdots/queries``, ``pairdots/skipped``, ``pairdots/mean_top1_influence``,
``pairdots/seconds``; a ``None`` mean, when nothing was explained, is left out) goes through
``Trainer.log`` when the callback was attached, so every callback's ``on_log`` receives it
(TensorBoard, wandb, MLflow, ...), and it is appended to ``state.log_history`` once.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from .arguments import ExplainArguments
from .distributed import broadcast_object, is_distributed, is_main_process
from .explain import Explainer, Query, skipped_rows
from .influence import mean_loss_gradient, self_influence, tail_disagreement, train_influence
from .loss import make_train_loss, prepare_data
from .modeling import influence_mode, predict_encoded
from .solve import compute_s_test
from .text import EncodedText, unscorable_texts
from .report import ExplanationStore, atomic_write_text, write_dataset, write_report

META_NAME = "meta.json"
SUSPICIOUS_NAME = "suspicious.json"

logger = logging.getLogger(__name__)


def select_queries(texts, golds, probs, args: ExplainArguments, unscorable: dict[int, str] | None = None,
                   encoded: dict[int, EncodedText] | None = None) -> tuple[list[Query], list[dict]]:
    """Queries to explain and the rows skipped with their reason.

    ``probs`` ``(N, num_labels)``: the model's probabilities of every text, which the queries
    carry (``Query.probabilities``: not predicted again); ``encoded``: ``{row: EncodedText}``,
    the texts tokenised with ``args.max_length``, which they carry too (not tokenised again).

    Skips the rows of ``unscorable`` (``{row: reason}``: texts in which no word can be scored,
    see :func:`~hf_pairdots.text.unscorable_texts`; default: the empty/whitespace texts)
    and gold labels outside the model's labels (reason given);
    ``None`` gold (unlabelled data) is kept and only the predicted label is explained. An
    unlabelled row is never misclassified: with ``queries="misclassified"`` it is not selected
    (an unlabelled split gives 0 queries; use ``"all"`` or ``"indices"``).
    """
    num_labels = probs.shape[1] if len(probs) else 0
    chosen, skipped = [], []
    rows = args.query_indices if args.queries == "indices" else range(len(texts))
    if unscorable is None:
        unscorable = {i: "empty or whitespace-only text" for i, text in enumerate(texts) if not text.strip()}
    for i in rows:
        gold = golds[i]
        if i in unscorable:
            skipped.append({"index": i, "reason": unscorable[i]})
        elif gold is not None and not 0 <= gold < num_labels:
            skipped.append({"index": i, "reason": f"label {gold} outside the model's {num_labels} labels"})
        elif args.queries != "misclassified" or (gold is not None and int(probs[i].argmax()) != gold):
            chosen.append(Query(i, texts[i], gold, (encoded or {}).get(i), probs[i]))
    return chosen[:args.max_queries], skipped


class PairDotsCallback(TrainerCallback):
    """Explains dev misclassifications at the end of training (Sec. 4.1, error analysis).

    Args:
        query_dataset: the split to explain, with ``text`` and (optionally) ``label`` columns.
        train_dataset: the training set with ``text`` and ``label``; defaults to the Trainer's
            train dataset when that still has a ``text`` column.
        tokenizer: defaults to the Trainer's ``processing_class``.
        args: :class:`~hf_pairdots.arguments.ExplainArguments`.
        on_evaluate: also explain after every evaluation (into ``<subdir>/step-<N>``).

    Attributes:
        trainer: the Trainer bound by :meth:`attach` (``None`` for a plain callback).
        last_summary: the summary of the last explanation (see :func:`explain_dataset`).

    Raises:
        ValueError: a dataset lacks a ``text`` column (in ``__init__``), or, at train end, no
            training set or tokenizer can be found.

    Example::

        >>> trainer = Trainer(model, args, train_dataset=train_tok, processing_class=tok)
        >>> callback = PairDotsCallback.attach(trainer, dev, train_dataset=train)
        >>> trainer.train()  # then <output_dir>/pairdots/report.html; on_log gets "pairdots/queries", ...
    """

    def __init__(self, query_dataset, train_dataset=None, tokenizer=None, args: ExplainArguments | None = None,
                 on_evaluate: bool = False):
        for name, ds in (("query_dataset", query_dataset), ("train_dataset", train_dataset)):
            if ds is not None and "text" not in ds.column_names:
                raise ValueError(f"PairDotsCallback: {name} needs a 'text' column; it has {ds.column_names}")
        self.query_dataset, self.train_dataset, self.tokenizer = query_dataset, train_dataset, tokenizer
        self.args = args or ExplainArguments()
        self.explain_on_evaluate = on_evaluate
        self.last_summary: dict | None = None
        self.trainer = None

    @classmethod
    def attach(cls, trainer, query_dataset, **kwargs) -> PairDotsCallback:
        """Construct a callback bound to ``trainer`` and register it first among its callbacks.

        Bound, the callback logs its summary with ``trainer.log`` (so the ``report_to``
        integrations receive it through ``on_log``) and falls back to ``trainer.train_dataset``
        when that still has a ``text`` column. It is put *first* in the callback list because
        integrations close their runs in their own ``on_train_end`` (TensorBoard closes its
        writer, MLflow ends the run): going first, the summary reaches them while they are open.
        The explanations do not depend on the position (the callback only reads the model).

        Args:
            trainer: a ``transformers.Trainer`` (anything with ``log`` and ``add_callback``).
            query_dataset, **kwargs: as for :class:`PairDotsCallback`.

        Returns:
            The callback (``callback.trainer is trainer``).

        Raises:
            TypeError: ``trainer`` has no ``log``/``add_callback``/``callback_handler``.
        """
        if not all(hasattr(trainer, name) for name in ("log", "add_callback", "callback_handler")):
            raise TypeError(f"PairDotsCallback.attach: expected a transformers.Trainer, got {type(trainer).__name__}")
        callback = cls(query_dataset, **kwargs)
        callback.trainer = trainer
        trainer.add_callback(callback)
        callbacks = trainer.callback_handler.callbacks
        callbacks.remove(callback)
        callbacks.insert(0, callback)
        return callback

    def on_train_end(self, args, state, control, **kwargs):
        self._run(Path(args.output_dir) / self.args.output_subdir, args, state, kwargs)
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.explain_on_evaluate:
            out = Path(args.output_dir) / self.args.output_subdir / f"step-{state.global_step}"
            self._run(out, args, state, kwargs)
        return control

    def _run(self, out: Path, train_args, state, kwargs) -> None:
        if not state.is_world_process_zero and not is_distributed():
            return  # every rank scores its shard when there is a process group; rank 0 writes
        tokenizer = self.tokenizer or kwargs.get("processing_class")
        train = self.train_dataset
        if train is None:  # the Trainer's, if it kept the text (the dataloader's copy rarely does)
            candidates = (getattr(self.trainer, "train_dataset", None),
                          getattr(kwargs.get("train_dataloader"), "dataset", None))
            train = next((c for c in candidates if "text" in (getattr(c, "column_names", None) or ())), None)
        if tokenizer is None:
            raise ValueError("PairDotsCallback: no tokenizer; pass tokenizer= or Trainer(processing_class=...)")
        if train is None or "text" not in train.column_names:
            raise ValueError("PairDotsCallback: the Trainer's train dataset has no 'text' column; pass train_dataset=")
        warn_if_loss_differs(train_args)
        self.last_summary = explain_dataset(kwargs["model"], tokenizer, train, self.query_dataset, self.args, out,
                                            show_progress=not train_args.disable_tqdm,
                                            meta={"global_step": state.global_step,
                                                  "best_model_checkpoint": state.best_model_checkpoint})
        logs = {"pairdots/" + k: v for k, v in self.last_summary.items() if v is not None}
        if self.trainer is not None:
            self.trainer.log(logs)  # appends to state.log_history and calls every callback's on_log
        else:
            state.log_history.append({**logs, "step": state.global_step})
        if state.is_world_process_zero:
            logger.info("PairDots: %s", self.last_summary)


def encode_queries(tokenizer, texts, max_length: int) -> tuple[dict[int, EncodedText], dict[int, str]]:
    """Every text of a query split tokenised once: ``({row: EncodedText}, {row: reason})``, the
    second for the rows in which no word can be scored (empty, every word deleted by the
    tokenizer's normaliser, or no room within ``max_length``: the reasons of
    :func:`~hf_pairdots.text.unscorable_texts`). Cost: one tokenisation of each text."""
    rows = [i for i, text in enumerate(texts) if text.split()]
    encoded = dict(zip(rows, EncodedText.encode_many(tokenizer, [texts[i] for i in rows], max_length, rows=rows)))
    bad = [i for i in range(len(texts)) if i not in encoded or not encoded[i].scored]
    reasons = unscorable_texts(tokenizer, [texts[i] for i in bad], max_length)
    unscorable = {bad[j]: reason for j, reason in reasons.items()}
    return {i: e for i, e in encoded.items() if i not in unscorable}, unscorable


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

    With ``args.suspicious > 0`` it also writes ``suspicious.json``, the training examples with
    the largest self-influence (:func:`find_suspicious`, on rank 0), puts their diagnostics
    under ``meta.json``'s ``"suspicious"`` (a ``"warning"`` there when the dev-loss influence
    ranking disagrees) and adds a section to the report; with the default 0 nothing changes.

    Under ``torch.distributed`` (several processes) call it on every rank: rank 0 decides what
    is pending and alone writes; the other ranks score their shard of the training set and
    return rank 0's summary.
    """
    with influence_mode(model) as model:
        return _explain_dataset(model, tokenizer, train, queries_ds, args, Path(out), chunk_size, show_progress,
                                meta or {})


def _explain_dataset(model, tokenizer, train, queries_ds, args, out: Path, chunk_size, show_progress, meta) -> dict:
    start = time.perf_counter()
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        args.to_json(out / "explain_args.json")
    store = ExplanationStore(out) if main else None
    texts = list(queries_ds["text"])
    golds = list(queries_ds["label"]) if "label" in queries_ds.column_names else [None] * len(texts)
    encoded, unscorable = encode_queries(tokenizer, texts, args.max_length)
    probs = torch.zeros(len(texts), model.config.num_labels)
    if encoded:
        probs[list(encoded)] = predict_encoded(model, tokenizer, list(encoded.values()), batch_size=args.batch_size,
                                               show_progress=show_progress)
    queries, skipped = select_queries(texts, golds, probs, args, unscorable, encoded)
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
    records = [r for r in store.records() if r["query_index"] in {q.index for q in queries}]
    write_dataset(records, out / "explanations")
    top1 = [entry["top_train"][0]["influence"] for r in records for entry in r["labels"] if entry["top_train"]]
    summary = {"queries": len(records), "skipped": len(skipped),
               "mean_top1_influence": sum(top1) / len(top1) if top1 else None,
               "seconds": round(time.perf_counter() - start, 1)}
    skipped_train = (explainer.skipped_train_rows if explainer is not None
                     else skipped_rows(tokenizer, list(train["text"]), args.max_length))
    full_meta = {**meta, **summary, "skipped_rows": skipped, "train_size": len(train),
                 **({"skipped_train_rows": skipped_train} if skipped_train else {})}
    suspicious = None
    if args.suspicious:
        suspicious = _write_suspicious(model, tokenizer, train, queries_ds, args, out, full_meta)
    atomic_write_text(out / META_NAME, json.dumps(full_meta, indent=2, default=str) + "\n")
    write_report(out, records, full_meta, suspicious)
    if is_distributed():
        broadcast_object(summary)
    return summary


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
        objective = make_train_loss(model, args.suspicious_params)
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
    objective = make_train_loss(model, args.params)
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


def warn_if_loss_differs(train_args) -> bool:
    """Warn (``UserWarning``) when the ``TrainingArguments`` train with a loss other than the one
    influence differentiates (:func:`~hf_pairdots.loss.example_losses`): a
    ``label_smoothing_factor`` above 0 moves the optimum, so the mean gradient of the plain loss
    is not about 0 there and H is taken at another point than the training loss's. Returns
    whether it warned."""
    smoothing = float(getattr(train_args, "label_smoothing_factor", 0.0) or 0.0)
    if smoothing > 0:
        warnings.warn(f"TrainingArguments.label_smoothing_factor={smoothing:g}: the model was trained with label "
                      "smoothing, but influence differentiates the model's plain loss (cross-entropy without "
                      "smoothing), whose gradient at the trained weights is not zero; the scores describe a "
                      "slightly different minimum (train without smoothing for faithful influence)",
                      UserWarning, stacklevel=2)
        return True
    return False
