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

This module is only the Trainer glue: what is explained and written is
:func:`hf_pairdots.pipeline.explain_dataset`, which works without a Trainer (``pairdots
explain``, the recipes). ``hf_pairdots.callback.explain_dataset``, ``select_queries``,
``find_suspicious``, ``META_NAME`` and ``SUSPICIOUS_NAME`` are aliases of the names in
:mod:`hf_pairdots.pipeline`, kept for old imports.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .arguments import ExplainArguments
from .distributed import is_distributed
from .loss import example_losses
from .modeling import eval_mode, model_device, problem_type, unwrap_model
from .pipeline import META_NAME, SUSPICIOUS_NAME, explain_dataset, find_suspicious, select_queries

__all__ = ["META_NAME", "SUSPICIOUS_NAME", "PairDotsCallback", "explain_dataset", "find_suspicious", "select_queries"]

logger = logging.getLogger(__name__)


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
        ValueError: a dataset lacks a ``text`` column (in ``__init__``), or no training set with
            text or no tokenizer can be found (at train begin, before the first step).

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

    def on_train_begin(self, args, state, control, **kwargs):
        """Check, before the first step, that the training texts and the tokenizer can be found
        (case C41: the Trainer's dataloader drops the ``text`` column), so that a missing one
        fails now rather than after training."""
        self._inputs(kwargs)

    def _inputs(self, kwargs) -> tuple:
        """``(tokenizer, training set with text)`` from the constructor, else the Trainer."""
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
        return tokenizer, train

    def _run(self, out: Path, train_args, state, kwargs) -> None:
        if not state.is_world_process_zero and not is_distributed():
            return  # every rank scores its shard when there is a process group; rank 0 writes
        tokenizer, train = self._inputs(kwargs)
        args = with_training_smoothing(self.args, train_args)
        warn_if_loss_differs(train_args, args)
        if self.trainer is not None:
            warn_if_trainer_loss_differs(self.trainer, kwargs["model"], args)
        self.last_summary = explain_dataset(kwargs["model"], tokenizer, train, self.query_dataset, args, out,
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


def _training_smoothing(train_args) -> float:
    return float(getattr(train_args, "label_smoothing_factor", 0.0) or 0.0)


def with_training_smoothing(args: ExplainArguments, train_args) -> ExplainArguments:
    """``args`` with ``label_smoothing`` None replaced by the ``TrainingArguments``'
    ``label_smoothing_factor`` when that is above 0 (a copy; ``args`` is not changed), so that
    influence differentiates the smoothed loss the Trainer trained with. None stays None
    without smoothing, so a run saved before this option resumes unchanged."""
    smoothing = _training_smoothing(train_args)
    if args.label_smoothing is not None or smoothing == 0:
        return args
    resolved = copy.copy(args)
    resolved.label_smoothing = smoothing  # the flat setter replaces the measurement group: args keeps its own
    return resolved


def warn_if_loss_differs(train_args, args: ExplainArguments | None = None) -> bool:
    """Warn (``UserWarning``) when the ``TrainingArguments``' ``label_smoothing_factor`` is not
    the ``label_smoothing`` influence differentiates (``args.label_smoothing``, None = 0; see
    :func:`~hf_pairdots.loss.example_losses`): the optimum of the loss trained then differs from
    the one differentiated, whose mean gradient at the trained weights is not zero, and H is
    taken at another point. Under the callback ``args`` comes from
    :func:`with_training_smoothing`, so this warns only for a smoothing set by hand to another
    value. Returns whether it warned."""
    trained = _training_smoothing(train_args)
    differentiated = float((args.label_smoothing if args is not None else None) or 0.0)
    if trained == differentiated:
        return False
    warnings.warn(f"TrainingArguments.label_smoothing_factor={trained:g}, but influence differentiates the "
                  f"cross-entropy with label_smoothing={differentiated:g}, whose gradient at the trained weights "
                  "is not zero; the scores describe another minimum (leave ExplainArguments.label_smoothing "
                  "None to follow the training)", UserWarning, stacklevel=2)
    return True


def warn_if_trainer_loss_differs(trainer, model, args: ExplainArguments | None = None, rtol: float = 1e-4) -> bool:
    """Warn (``UserWarning``) when a Trainer with its own loss (a subclass overriding
    ``compute_loss``, e.g. class-weighted cross-entropy, or a ``compute_loss_func``) gives another
    value on the first training batch than the loss influence differentiates, beyond relative
    ``rtol``: :func:`~hf_pairdots.loss.example_losses` with ``args``' ``label_smoothing`` and
    ``class_weights`` (none without ``args``), averaged as ``nn.CrossEntropyLoss(weight=w)``
    does, Σ_i ℓ_i / Σ_i w_{y_i}. The scores would then describe the minimum of another loss. A
    Trainer without its own loss is not checked. Only an attached callback
    (:meth:`PairDotsCallback.attach`) knows its Trainer; a plain callback is never handed it, so
    this check needs ``attach``. Returns whether it warned.

    Cost: two forward passes of one training batch, in eval mode, without gradients (the
    model's mode is restored).
    """
    custom = type(trainer).compute_loss is not Trainer.compute_loss or getattr(trainer, "compute_loss_func", None)
    if not custom:
        return False
    net = unwrap_model(model)
    device = model_device(net)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in
             next(iter(trainer.get_train_dataloader())).items()}
    if "labels" not in batch:  # nothing to compare the loss with
        return False
    terms = args.measurement.loss_terms() if args is not None else {}
    with eval_mode(net), torch.no_grad():
        trained = float(trainer.compute_loss(net, dict(batch)))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        losses = example_losses(net(**inputs).logits, batch["labels"], problem_type(net), **terms)
        weights = terms.get("class_weights")
        own = float(losses.mean() if weights is None
                    else losses.sum() / torch.as_tensor(weights, device=device)[batch["labels"]].sum())
    if abs(trained - own) <= rtol * max(abs(own), 1e-12):
        return False
    described = ", ".join(f"{k}={v}" for k, v in terms.items() if v) or "no label smoothing, no class weights"
    warnings.warn(f"{type(trainer).__name__}.compute_loss gives {trained:.6g} on the first training batch, but "
                  f"influence differentiates {own:.6g} (the {problem_type(net)} loss with {described}); the "
                  "scores describe the minimum of that loss, not of the one trained (set "
                  "ExplainArguments.label_smoothing / class_weights to the training's; Explainer.train_gradient_norm "
                  "says how far off the point is)", UserWarning, stacklevel=2)
    return True
