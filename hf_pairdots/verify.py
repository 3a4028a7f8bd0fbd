"""Retraining checks of an explanation run: does removing the training examples that the
influence scores name move the measurement the way the scores predict?

For Q explained rows of a run folder (written by ``explain_dataset`` / ``pairdots explain``;
a row is one explained label of one query, or one query's test loss), with the full row of
Eq. 5 scores I(z_i, m) over the n scored training examples:

1. **Plan** (:func:`plan_removals`, :func:`plan_lds_subsets`): per row, the k examples of
   largest influence (top-k), the k of smallest (bottom-k) and ``random_sets`` sets of k drawn
   at random from the rest (the three kinds disjoint, seeded per row); optionally (``upweight``)
   the top-k and bottom-k added a second time instead of removed; and, for the linear
   datamodeling score (LDS), M random subsets keeping a fraction α of the training rows,
   shared by every row.
2. **Predict** (:func:`predicted_change`): to first order, changing the weight of z_i in the
   mean training loss by ε_i moves m by Σ ε_i I(z_i, m) (the sign convention of
   docs/ARCHITECTURE.md). Removing a set S is ε_i = -1/n: Δm ≈ -Σ_S I / n; adding S once
   more is ε_i = +1/n: Δm ≈ +Σ_S I / n.
3. **Retrain** (:func:`run_jobs`): one job per set and protocol, plus one job on the full
   training set per protocol, the baseline. Protocols: ``"initial"``, from the initial weights
   (``init_model``) with the same seed, ``epochs`` at ``learning_rate``; ``"warm"``, a short
   re-optimisation from the trained weights, ``warm_epochs`` at ``warm_learning_rate``. The
   actual change of a job is m(θ_job) - m(θ_baseline) of the same protocol, so the drift that a
   protocol causes by itself (a warm start is not at the optimum of its own run; a retrain from
   the initial weights does not reproduce the trained model bit for bit) cancels. Every job of a
   protocol takes the optimiser steps of its full-data job (:func:`job_epochs`), whatever the
   size of its training set.
   Jobs are independent: a ``concurrent.futures`` process pool (``max_workers``) here, one
   process per GPU under ``accelerate launch`` (jobs dealt out by process index). Each finished
   job is one JSON file under ``<run>/verify/jobs/``, written atomically: a rerun skips it.
4. **Re-measure** (:func:`measure`): every row on every retrained model: the saliency of the
   explained word for the explained label (times -1 where the run explained |s|), or the
   cross-entropy of the query's gold label.
5. **Aggregate** (:func:`aggregate`): per protocol, sign agreement of actual and predicted
   changes of the targeted (top-k, bottom-k) sets, Spearman(predicted, actual) over every
   (row, set) pair, the targeted effect (mean |Δm| of the targeted sets) over the random effect
   (mean |Δm| of the random sets: the retraining noise floor), and the LDS (Park et al., 2023:
   Spearman over the M subsets of predicted and actual change, averaged over rows).

Outputs under ``<run>/verify/``: ``verify_args.json``, ``plan.json`` (rows, sets, predictions),
``jobs/*.json``, ``report.json`` and ``report.html`` (jinja2 template
``templates/verify_report.html.j2``, inline SVG scatter plots, no scripts).

Costs: the plan is one Explainer construction and one solve over the Q rows (as an
explanation run of Q rows, without Eq. 8); each job is one retraining (``epochs`` x N examples
forward + backward for ``"initial"``, ``warm_epochs`` x N for ``"warm"``) and Q measurements.
Jobs per protocol: 1 + Q x (2 + random_sets) (x 2 more targeted sets with ``upweight``) + M.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jinja2 import Environment, PackageLoader
from scipy.stats import spearmanr

from .arguments import ExplainArguments
from .distributed import broadcast_object
from .errors import IncompatibleRunError
from .io import atomic_write_text

VERIFY_DIR = "verify"
JOBS_DIR = "jobs"
PROTOCOLS = ("initial", "warm")
MEASUREMENTS = ("saliency", "loss")
RETRAIN_PARAMS = ("all", "explained")
TARGETED_KINDS = ("top", "bottom", "top_up", "bottom_up")
EXECUTION_FIELDS = ("max_workers", "num_threads")
"""Options that change how jobs run, not what they compute: free to differ on a rerun."""


@dataclass
class VerifyArguments:
    """Options of a retraining check (:func:`verify_run`); validated on construction.

    Attributes:
        k: training examples per removal set; ``None`` = ``round(k_fraction x n)``.
        k_fraction: k as a fraction of the n scored training examples, when ``k`` is ``None``.
        protocol: ``"initial"``, ``"warm"`` or ``"both"`` (see the module docstring).
        random_sets: random removal sets of k per row (the noise floor).
        upweight: also add the top-k and bottom-k a second time (predicted +Σ I / n).
        lds_subsets: M, random subsets for the linear datamodeling score (0 = off).
        lds_fraction: α, the fraction of training rows each LDS subset keeps.
        measurement: ``"saliency"`` (what the run explained) or ``"loss"`` (the query's gold
            cross-entropy, Koh & Liang; queries without a gold label are left out).
        max_rows: check at most this many rows (the first, in query order); ``None`` = all.
        init_model: model folder or Hub id of the initial weights (``"initial"`` protocol),
            loaded with the trained model's labels after seeding with ``seed``.
        epochs, learning_rate: the ``"initial"`` protocol's training.
        warm_epochs, warm_learning_rate: the ``"warm"`` protocol's re-optimisation.
        batch_size, seed, weight_decay: of both protocols (one seed for every job).
        retrain_params: ``"all"`` (every trainable parameter) or ``"explained"`` (only θ_S of
            the run, the rest frozen: the setting the influence scores assume).
        max_workers: parallel retraining processes on this machine (1 = in this process).
        num_threads: torch threads per job (``None`` = leave as is).
    """

    k: int | None = None
    k_fraction: float = 0.05
    protocol: str = "warm"
    random_sets: int = 1
    upweight: bool = False
    lds_subsets: int = 0
    lds_fraction: float = 0.5
    measurement: str = "saliency"
    max_rows: int | None = None
    init_model: str | None = None
    epochs: float = 1.0
    learning_rate: float = 5e-5
    warm_epochs: float = 0.25
    warm_learning_rate: float = 1e-5
    batch_size: int = 16
    seed: int = 0
    weight_decay: float = 0.01
    retrain_params: str = "all"
    max_workers: int = 1
    num_threads: int | None = 1

    def __post_init__(self):
        choices = {"protocol": (*PROTOCOLS, "both"), "measurement": MEASUREMENTS, "retrain_params": RETRAIN_PARAMS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VerifyArguments.{name}={getattr(self, name)!r}: use one of {allowed}")
        for name in ("k", "max_rows", "num_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"VerifyArguments.{name}={value!r}: must be a positive int (or None)")
        for name in ("random_sets", "max_workers", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "random_sets" else 1):
                raise ValueError(f"VerifyArguments.{name}={getattr(self, name)!r}: must be an int >= "
                                 f"{0 if name == 'random_sets' else 1}")
        if not isinstance(self.lds_subsets, int) or self.lds_subsets == 1 or self.lds_subsets < 0:
            raise ValueError(f"VerifyArguments.lds_subsets={self.lds_subsets!r}: 0 (off) or at least 2 subsets "
                             "(a Spearman correlation needs two points)")
        for name in ("k_fraction", "lds_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"VerifyArguments.{name}={getattr(self, name)}: must lie in (0, 1)")
        for name in ("epochs", "learning_rate", "warm_epochs", "warm_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VerifyArguments.{name}={getattr(self, name)}: must be > 0")
        if "initial" in self.protocols and self.init_model is None:
            raise ValueError(f"VerifyArguments.protocol={self.protocol!r} retrains from the initial weights: give "
                             "init_model (the model folder or Hub id the run's model was fine-tuned from)")

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols to run, ``("initial", "warm")`` for ``"both"``."""
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VerifyArguments:
        return cls(**data)

    def differences(self, other: VerifyArguments) -> list[str]:
        """Names of the options, other than :data:`EXECUTION_FIELDS`, whose values differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if name not in EXECUTION_FIELDS and mine[name] != theirs[name]]


@dataclass
class Row:
    """One measurement m(θ) of a run: ``label`` of query ``query_index`` (``text``), with
    ``word`` the explained word (an index into the whitespace words; ``None`` for the test loss)
    and ``sign`` -1 where the run explained |s| of a word whose saliency is negative."""

    query_index: int
    text: str
    label: int
    role: str
    word: int | None
    sign: float = 1.0


# ------------------------------------------------------------------------------- planning


def measurement_rows(records: Sequence[dict], measurement: str, salient_by: str = "value",
                     max_rows: int | None = None) -> list[Row]:
    """The rows to check, from explanation records read as plain dicts (docs/ARCHITECTURE.md).

    ``"saliency"``: one row per explained label of each record (its ``salient_word``; with
    ``salient_by="magnitude"`` the sign of its saliency). ``"loss"``: one row per record with a
    gold label. Records are taken in ``query_index`` order; at most ``max_rows`` rows.

    Raises:
        ValueError: no row to check.
    """
    rows = []
    for record in sorted(records, key=lambda r: r["query_index"]):
        if measurement == "loss":
            if record.get("gold") is not None:
                rows.append(Row(record["query_index"], record["text"], int(record["gold"]), "gold", None))
            continue
        for entry in record["labels"]:
            word = int(entry["salient_word"])
            value = entry["saliency"][word]
            sign = -1.0 if salient_by == "magnitude" and value is not None and value < 0 else 1.0
            rows.append(Row(record["query_index"], record["text"], int(entry["label"]), entry["role"], word, sign))
    rows = rows[:max_rows]
    if not rows:
        raise ValueError(f"no {measurement} row to check in the run's records"
                         + (" (no query has a gold label)" if measurement == "loss" else ""))
    return rows


def plan_removals(scores: np.ndarray, k: int, *, random_sets: int = 1, seed: int = 0) -> list[dict]:
    """The removal sets of each row of a score matrix, as column positions.

    Args:
        scores: ``(Q, n)`` influence scores I(z_i, m_q) (Eq. 5).
        k: examples per set.
        random_sets: random sets per row.
        seed: row q's random sets come from ``numpy.random.default_rng([seed, q])``.

    Returns:
        Per row ``{"top": (k,), "bottom": (k,), "random": [(k,), ...]}`` of int positions: the
        k largest scores (largest first), the k smallest (smallest first), and ``random_sets``
        sets of k drawn without replacement from the other n - 2k positions (sorted). Ties are
        broken by position (stable sort). The three kinds are disjoint within a row.

    Raises:
        ValueError: ``k < 1`` or ``n < 2k + k`` (with random sets) / ``2k`` (without).
    """
    scores = np.asarray(scores, dtype=np.float64)
    q, n = scores.shape
    need = 2 * k + (k if random_sets else 0)
    if k < 1 or n < need:
        raise ValueError(f"k={k}: needs 1 <= k and {need} <= n = {n} training examples (top-k, bottom-k"
                         f"{' and a random set of k outside both' if random_sets else ''}); lower k")
    plans = []
    for row in range(q):
        order = np.argsort(-scores[row], kind="stable")
        top = order[:k]
        bottom = np.argsort(scores[row], kind="stable")[:k]
        rest = np.setdiff1d(np.arange(n), np.concatenate([top, bottom]))
        rng = np.random.default_rng([seed, row])
        randoms = [np.sort(rng.choice(rest, size=k, replace=False)) for _ in range(random_sets)]
        plans.append({"top": top, "bottom": bottom, "random": randoms})
    return plans


def plan_lds_subsets(n: int, m: int, fraction: float, seed: int = 0) -> list[np.ndarray]:
    """M random subsets of ``round(fraction x n)`` (at least 1) of ``n`` column positions, each
    sorted: the training sets of the linear datamodeling score (Park et al., 2023, TRAK).
    Subset j is drawn by ``numpy.random.default_rng([seed, 1_000_003 + j])``, apart from the
    rows' random sets. Returns ``[(size,), ...]`` int arrays."""
    size = max(1, round(fraction * n))
    return [np.sort(np.random.default_rng([seed, 1_000_003 + j]).choice(n, size=size, replace=False))
            for j in range(m)]


def predicted_change(scores: np.ndarray, columns: np.ndarray, weight: float = -1.0) -> np.ndarray:
    """First-order change of each measurement when the examples at ``columns`` get ``weight``
    more copies in the mean training loss: ``weight x Σ_{i in columns} I(z_i, m_q) / n``.

    ``scores`` ``(Q, n)``; ``weight=-1`` removes them (Δm ≈ -Σ I / n), ``+1`` adds them once
    more. Returns ``(Q,)``. Source: the sign convention of Eq. 4-5 (ε = weight / n per example).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return weight * scores[:, np.asarray(columns, dtype=np.int64)].sum(1) / scores.shape[1]


def build_plan(scores: np.ndarray, train_rows: Sequence[int], args: VerifyArguments) -> dict:
    """The jobs of a check: per protocol a baseline ``"full"`` job, the targeted and random
    sets of every row, and the LDS subsets, each with its training-set rows and the predicted
    change of every row (``None`` for the baseline).

    ``scores`` ``(Q, n)``: column j is training row ``train_rows[j]``. Job entries: ``id``,
    ``protocol``, ``kind`` (``full``/``top``/``bottom``/``top_up``/``bottom_up``/``random``/
    ``lds``), ``row`` (the row whose set it is; ``None`` for ``full`` and ``lds``), ``remove``
    and ``add`` (training rows dropped / added once more; an LDS job drops the rows outside its
    subset), ``predicted`` (``(Q,)`` list or ``None``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[1]
    train_rows = np.asarray(train_rows, dtype=np.int64)
    k = args.k or max(1, round(args.k_fraction * n))
    sets = []  # (kind, row, columns, weight)
    for q, plan in enumerate(plan_removals(scores, k, random_sets=args.random_sets, seed=args.seed)):
        sets += [("top", q, plan["top"], -1.0), ("bottom", q, plan["bottom"], -1.0)]
        if args.upweight:
            sets += [("top_up", q, plan["top"], 1.0), ("bottom_up", q, plan["bottom"], 1.0)]
        sets += [("random", q, columns, -1.0) for columns in plan["random"]]
    jobs = []
    for protocol in args.protocols:
        jobs.append({"id": f"{protocol}-full", "protocol": protocol, "kind": "full", "row": None,
                     "remove": [], "add": [], "predicted": None})
        counts: dict[tuple, int] = {}
        for kind, q, columns, weight in sets:
            j = counts[(kind, q)] = counts.get((kind, q), -1) + 1
            rows_ = train_rows[columns].tolist()
            jobs.append({"id": f"{protocol}-{kind}-r{q}-{j}", "protocol": protocol, "kind": kind, "row": q,
                         "remove": rows_ if weight < 0 else [], "add": rows_ if weight > 0 else [],
                         "predicted": predicted_change(scores, columns, weight).tolist()})
        for j, kept in enumerate(plan_lds_subsets(n, args.lds_subsets, args.lds_fraction, args.seed)):
            dropped = np.setdiff1d(np.arange(n), kept)
            jobs.append({"id": f"{protocol}-lds-{j}", "protocol": protocol, "kind": "lds", "row": None,
                         "remove": train_rows[dropped].tolist(), "add": [],
                         "predicted": predicted_change(scores, dropped).tolist()})
    return {"k": k, "n": n, "jobs": jobs}


# ------------------------------------------------------------------------ measurement


def measure(model, tokenizer, rows: Sequence[Row], explain_args: ExplainArguments) -> list[float]:
    """m(θ) of every row at the model's current weights, ``(Q,)`` Python floats.

    Saliency rows: ``sign x`` the word saliency of ``row.word`` for ``row.label``
    (:func:`hf_pairdots.saliency.saliency`, the run's saliency mode, target and max length).
    Loss rows: cross-entropy of ``row.label`` (natural log), from one forward pass.
    The model must be in eval mode, float32. Cost: one forward (+ one backward) per row.
    """
    from .loss import tokenize
    from .modeling import model_device, model_inputs
    from .saliency import saliency

    out = []
    for row in rows:
        if row.word is None:
            batch = tokenize(tokenizer, [row.text], [row.label], explain_args.max_length)
            with torch.no_grad():
                logits = model(**model_inputs(batch, model_device(model))).logits.float()
            out.append(float(-torch.log_softmax(logits, -1)[0, row.label]))
        else:
            [sal] = saliency(model, tokenizer, [row.text], [row.label], mode=explain_args.saliency_mode,
                             target=explain_args.saliency_target, max_length=explain_args.max_length,
                             eraser=explain_args.eraser)
            out.append(row.sign * sal.scores[row.word])
    return out


def measurement_gradients(explainer, rows: Sequence[Row]) -> torch.Tensor:
    """∇θ m of every row, ``(Q, P)`` on the Explainer's device: the saliency of the row's word
    for its label times ``sign`` (:class:`~hf_pairdots.measurement.SaliencyMeasurement`) or its
    test loss (:class:`~hf_pairdots.measurement.LossMeasurement`), by
    :func:`~hf_pairdots.measurement.measurement_gradients`. Cost: one encoding of each row's text
    and the cheapest exact ∇θ m route per row."""
    from .measurement import LossMeasurement, SaliencyMeasurement
    from .measurement import measurement_gradients as gradients
    from .text import EncodedText

    args, out = explainer.args, []
    for row in rows:
        encoded = EncodedText.encode(explainer.tokenizer, row.text, args.max_length)
        m = (LossMeasurement(row.label) if row.word is None
             else SaliencyMeasurement(row.label, row.word, args.saliency_mode, args.saliency_target, row.sign,
                                         args.eraser))
        out.append(gradients(explainer.objective, encoded, [m])[0])
    return torch.stack(out)


# ------------------------------------------------------------------------------ jobs


@dataclass
class JobContext:
    """What every retraining job needs (pickled once per worker process).

    ``model`` and ``init_model``: ``nn.Module`` (deep-copied per job) or a name to load
    (:func:`hf_pairdots.models.load_classifier`); ``train``: the training ``datasets.Dataset``
    (``text``, ``label``); ``rows``: the measurements; ``device``: where jobs train (``None`` =
    the GPU of this process when there is one, else the CPU)."""

    model: object
    init_model: object
    tokenizer: object
    train: object
    rows: list[Row]
    explain_args: ExplainArguments
    args: VerifyArguments
    device: str | None = None


class SingleDeviceAccelerator:
    """The part of ``accelerate.Accelerator`` that :func:`hf_pairdots.training.train_classifier`
    uses, for one process training alone on one device: under ``accelerate launch`` every
    process retrains its own jobs, so nothing may be wrapped in DDP or sharded."""

    is_main_process = True

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)

    def prepare(self, model, optimizer, loader, scheduler):
        return model.to(self.device), optimizer, _DeviceLoader(loader, self.device), scheduler

    @staticmethod
    def backward(loss):
        loss.backward()

    @staticmethod
    def unwrap_model(model):
        return model


class _DeviceLoader:
    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {key: value.to(self.device) for key, value in batch.items()}


def job_hash(job: dict, args: VerifyArguments) -> str:
    """sha256 of what a job computes: its protocol, training set change and the training
    options (the options that do not change results, :data:`EXECUTION_FIELDS`, left out)."""
    options = {k: v for k, v in args.to_dict().items() if k not in EXECUTION_FIELDS}
    spec = {key: job[key] for key in ("protocol", "remove", "add")}
    return hashlib.sha256(json.dumps([spec, options], sort_keys=True).encode()).hexdigest()


def job_training_set(train, job: dict):
    """The training set of a job: ``train`` without the rows of ``job["remove"]``, with those of
    ``job["add"]`` appended once more (in their order)."""
    import datasets

    removed = set(job["remove"])
    subset = train.select([i for i in range(len(train)) if i not in removed]) if removed else train
    if job["add"]:
        subset = datasets.concatenate_datasets([subset, train.select(job["add"])])
    return subset


def job_epochs(epochs: float, full_size: int, size: int, batch_size: int) -> float:
    """The ``epochs`` to give :func:`~hf_pairdots.training.train_classifier` on ``size`` examples
    so that it takes as many optimiser steps as ``epochs`` over the full ``full_size`` would,
    ``ceil(epochs x ceil(full_size / batch_size))``: every job of a protocol then has the same
    steps and learning-rate schedule, and its change is the change of the data alone (with
    fixed epochs, removing 5 % of the data would also remove 5 % of the steps, and the drift of
    those steps would pass for an effect)."""
    steps = math.ceil(epochs * math.ceil(full_size / batch_size))
    return (steps - 0.5) / math.ceil(size / batch_size)  # ceil(...) of it x the job's batches is exactly `steps`


def _start_model(context: JobContext, protocol: str):
    from accelerate.utils import set_seed

    from .models import load_classifier

    source = context.model if protocol == "warm" else context.init_model
    if isinstance(source, torch.nn.Module):
        return copy.deepcopy(source)
    set_seed(context.args.seed)  # the same fresh head for every job of the protocol
    config = context.model.config
    return load_classifier(source, label_names=[config.id2label[i] for i in range(config.num_labels)])


def run_job(job: dict, context: JobContext) -> dict:
    """Retrain for one job and measure every row: ``{"id", "hash", "measurements" (Q,),
    "train_size", "seconds"}``. The context's models are copied, never changed; the torch
    thread count is set to ``num_threads`` for the job and restored."""
    start = time.perf_counter()
    args = context.args
    threads = torch.get_num_threads()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    try:
        return _retrain_and_measure(job, context, start)
    finally:
        torch.set_num_threads(threads)


def retrain(context: JobContext, protocol: str, train, *, full_size: int | None = None):
    """The model of one retraining: ``protocol`` (``"initial"``: from ``context.init_model`` with
    the args' seed, ``epochs`` at ``learning_rate``; ``"warm"``: from ``context.model``,
    ``warm_epochs`` at ``warm_learning_rate``) on the ``text``/``label`` dataset ``train``, with
    as many optimiser steps as the protocol takes on ``full_size`` rows (default
    ``len(context.train)``; :func:`job_epochs`). With ``retrain_params="explained"`` only θ_S of
    ``context.explain_args.params`` is trained. The context's models are copied, never changed.

    Cost: the protocol's epochs x ``full_size`` forward + backward passes. Returns the model in
    eval mode, float32, on the job device."""
    from .autograd import select_parameters
    from .training import train_classifier

    args = context.args
    device = context.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _start_model(context, protocol).float()
    if args.retrain_params == "explained":
        explained = set(select_parameters(model, context.explain_args.params).names)
        for name, param in model.named_parameters():
            param.requires_grad_(name in explained)
    warm = protocol == "warm"
    full_size = len(context.train) if full_size is None else full_size
    epochs = job_epochs(args.warm_epochs if warm else args.epochs, full_size, len(train), args.batch_size)
    return train_classifier(model, context.tokenizer, train, epochs=epochs,
                            learning_rate=args.warm_learning_rate if warm else args.learning_rate,
                            batch_size=args.batch_size, max_length=context.explain_args.max_length, seed=args.seed,
                            weight_decay=args.weight_decay, accelerator=SingleDeviceAccelerator(device),
                            show_progress=False)


def _retrain_and_measure(job: dict, context: JobContext, start: float) -> dict:
    train = job_training_set(context.train, job)
    model = retrain(context, job["protocol"], train)
    values = measure(model, context.tokenizer, context.rows, context.explain_args)
    return {"id": job["id"], "hash": job_hash(job, context.args), "measurements": values, "train_size": len(train),
            "seconds": round(time.perf_counter() - start, 2)}


_WORKER_CONTEXT: JobContext | None = None
"""The context of a pool worker process (set once by its initializer)."""


def _pool_init(context: JobContext) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context


def _pool_job(job: dict) -> dict:
    return run_job(job, _WORKER_CONTEXT)


def finished_jobs(jobs_dir: Path, jobs: Sequence[dict], args: VerifyArguments) -> dict[str, dict]:
    """Results already on disk whose hash matches the job (a job file with another hash, or
    that does not parse, counts as not done)."""
    done = {}
    for job in jobs:
        path = jobs_dir / f"{job['id']}.json"
        try:
            result = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if result.get("hash") == job_hash(job, args):
            done[job["id"]] = result
    return done


def run_jobs(jobs: Sequence[dict], context: JobContext, jobs_dir: str | Path, *, rank: int = 0,
             world_size: int = 1) -> dict[str, dict]:
    """Run the jobs not finished yet and return every job's result by id.

    Resumable: a job whose JSON file in ``jobs_dir`` holds its hash (:func:`job_hash`) is not
    rerun; each finished job is written at once (atomically, :mod:`hf_pairdots.io`), so a kill
    loses at most the jobs in flight. With ``world_size > 1`` (one process per GPU; call it on
    every process) the main process's list of pending jobs is broadcast, this process runs the
    pending jobs ``rank, rank + world_size, ...`` of it and returns only what is on
    disk after them (the caller synchronises the processes before aggregating). With
    ``context.args.max_workers > 1`` the jobs run in a ``ProcessPoolExecutor`` (spawned
    processes, the context sent once to each).
    """
    jobs_dir = Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    done = finished_jobs(jobs_dir, jobs, context.args)
    [pending_ids] = broadcast_object([job["id"] for job in jobs if job["id"] not in done])  # the main process's list
    pending = [job for job in jobs if job["id"] in set(pending_ids)][rank::world_size]

    def keep(result: dict) -> None:
        atomic_write_text(jobs_dir / f"{result['id']}.json", json.dumps(result, indent=1) + "\n")
        done[result["id"]] = result

    if context.args.max_workers == 1 or len(pending) <= 1:
        for job in pending:
            keep(run_job(job, context))
        return done
    with concurrent.futures.ProcessPoolExecutor(context.args.max_workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_pool_init, initargs=(context,)) as pool:
        for result in pool.map(_pool_job, pending):
            keep(result)
    return done


# -------------------------------------------------------------------------- aggregation


def sign_agreement(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Fraction of pairs with ``sign(actual) == sign(predicted)`` (a zero sign agrees only with
    zero); ``nan`` for no pairs."""
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    return float(np.mean(np.sign(predicted) == np.sign(actual))) if predicted.size else math.nan


def effect_ratio(targeted: Sequence[float], random: Sequence[float]) -> float:
    """mean |targeted change| / mean |random change|: how far the targeted removals stand above
    the retraining noise floor (``inf`` when every random change is 0, ``nan`` without data)."""
    targeted, random = np.abs(np.asarray(targeted, float)), np.abs(np.asarray(random, float))
    if not targeted.size or not random.size:
        return math.nan
    floor = random.mean()
    return float(targeted.mean() / floor) if floor > 0 else math.inf


def spearman(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``, ties averaged); ``nan`` for fewer
    than 2 pairs or a constant side."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if predicted.size < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return math.nan
    return float(spearmanr(predicted, actual).statistic)


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def aggregate(plan: dict, results: dict[str, dict], num_rows: int) -> dict:
    """The check's numbers, per protocol, from the plan's jobs and their results.

    Δm of a job = its measurements minus those of its protocol's ``full`` job. Per row q:
    ``pairs`` (kind, predicted, actual) of its own targeted and random sets; ``sign_agreement``
    over its targeted sets; ``direction_right`` (every targeted set agrees in sign);
    ``targeted_effect`` (mean |Δm_q| over its targeted sets), ``random_effect`` (mean |Δm_q| over
    *every* random set of the protocol: all are random with respect to row q) and their
    ``ratio``; ``lds`` (Spearman over the LDS subsets). Overall: ``sign_agreement`` over every
    (row, targeted set), ``rows_direction_right`` (fraction of rows), ``spearman`` over every
    (row, own set) pair, targeted and random effects over all rows and their ``ratio``, and
    ``lds`` (mean over rows). Protocols whose jobs are not all finished are reported as missing.
    """
    out = {}
    for protocol in dict.fromkeys(job["protocol"] for job in plan["jobs"]):
        jobs = [job for job in plan["jobs"] if job["protocol"] == protocol]
        missing = [job["id"] for job in jobs if job["id"] not in results]
        if missing:
            out[protocol] = {"missing_jobs": missing}
            continue
        base = np.asarray(results[f"{protocol}-full"]["measurements"], float)
        delta = {job["id"]: np.asarray(results[job["id"]]["measurements"], float) - base for job in jobs}
        randoms = [job for job in jobs if job["kind"] == "random"]
        lds_jobs = [job for job in jobs if job["kind"] == "lds"]
        per_row, all_targeted, all_pairs = [], [], []
        for q in range(num_rows):
            own = [job for job in jobs if job["row"] == q]
            pairs = [(job["kind"], job["predicted"][q], float(delta[job["id"]][q])) for job in own]
            targeted = [(p, a) for kind, p, a in pairs if kind in TARGETED_KINDS]
            random_actual = [float(delta[job["id"]][q]) for job in randoms]
            entry = {
                "pairs": [{"kind": kind, "predicted": p, "actual": a} for kind, p, a in pairs],
                "sign_agreement": sign_agreement(*zip(*targeted)) if targeted else math.nan,
                "direction_right": bool(targeted) and sign_agreement(*zip(*targeted)) == 1.0,
                "targeted_effect": float(np.mean([abs(a) for _, a in targeted])) if targeted else math.nan,
                "random_effect": float(np.mean(np.abs(random_actual))) if random_actual else math.nan,
                "ratio": effect_ratio([a for _, a in targeted], random_actual),
                "lds": spearman([job["predicted"][q] for job in lds_jobs], [delta[job["id"]][q] for job in lds_jobs]),
            }
            per_row.append(entry)
            all_targeted += targeted
            all_pairs += [(p, a) for _, p, a in pairs]
        all_random = [float(delta[job["id"]][q]) for job in randoms for q in range(num_rows)]
        out[protocol] = {
            "sign_agreement": sign_agreement(*zip(*all_targeted)) if all_targeted else math.nan,
            "rows_direction_right": float(np.mean([row["direction_right"] for row in per_row])),
            "spearman": spearman(*zip(*all_pairs)) if all_pairs else math.nan,
            "targeted_effect": float(np.mean([abs(a) for _, a in all_targeted])) if all_targeted else math.nan,
            "random_effect": float(np.mean(np.abs(all_random))) if all_random else math.nan,
            "ratio": effect_ratio([a for _, a in all_targeted], all_random),
            "lds": _mean([row["lds"] for row in per_row]),
            "lds_subsets": len(lds_jobs),
            "rows": per_row,
            "seconds": round(sum(results[job["id"]]["seconds"] for job in jobs), 1),
        }
    return out


# ----------------------------------------------------------------------------- report

_ENV = Environment(loader=PackageLoader("hf_pairdots", "templates"), autoescape=True)


def scatter_svg(points: Sequence[tuple[float, float, str]], size: int = 260) -> str:
    """An inline SVG scatter of (predicted, actual, kind) with the y = x line and both axes
    through 0; markup only (the template marks it safe). Colours by kind: targeted sets red,
    random grey, LDS blue."""
    colours = {"random": "#888", "lds": "#1f77b4"}
    finite = [(p, a, k) for p, a, k in points if math.isfinite(p) and math.isfinite(a)]
    if not finite:
        return ""
    span = max(max(abs(p), abs(a)) for p, a, _ in finite) or 1.0
    half, pad = size / 2, 12

    def xy(p, a):
        return half + (half - pad) * p / span, half - (half - pad) * a / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">',
             f'<rect width="{size}" height="{size}" fill="white" stroke="#ccc"/>',
             f'<line x1="0" y1="{half}" x2="{size}" y2="{half}" stroke="#ddd"/>',
             f'<line x1="{half}" y1="0" x2="{half}" y2="{size}" stroke="#ddd"/>',
             f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>']
    for p, a, kind in finite:
        x, y = xy(p, a)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colours.get(kind, "#d62728")}" '
                     f'fill-opacity="0.7"><title>{kind}: predicted {p:.3g}, actual {a:.3g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _json_ready(value):
    """NaN and infinity as ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_verify_report(out: str | Path, report: dict) -> None:
    """``report.json`` and ``report.html`` (one table of overall numbers and one scatter of
    predicted vs actual change per protocol, per-row table) in ``out``, atomically."""
    out = Path(out)
    atomic_write_text(out / "report.json", json.dumps(_json_ready(report), indent=2) + "\n")
    plots = {}
    for protocol, numbers in report["protocols"].items():
        if "rows" in numbers:
            points = [(pair["predicted"], pair["actual"], pair["kind"]) for row in numbers["rows"] for pair in row["pairs"]]
            plots[protocol] = scatter_svg(points)
    html = _ENV.get_template("verify_report.html.j2").render(report=_json_ready(report), plots=plots)
    atomic_write_text(out / "report.html", html)


# ------------------------------------------------------------------------------ driver


def read_run(run_dir: str | Path) -> tuple[list[dict], dict, ExplainArguments]:
    """``(records, meta, explain_args)`` of an explanation run folder: the records as plain
    dicts from ``explanations.jsonl`` (the last line of a query wins), ``meta.json`` (``{}``
    when absent) and ``explain_args.json``.

    Raises:
        FileNotFoundError: the folder lacks ``explanations.jsonl`` or ``explain_args.json``.
    """
    run_dir = Path(run_dir)
    for name in ("explanations.jsonl", "explain_args.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not an explanation run: no {name} (write one with "
                                    "`pairdots explain` or explain_dataset)")
    records = {}
    for line in (run_dir / "explanations.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the remainder of a killed append; ExplanationStore drops it too
            records[record["query_index"]] = record
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return list(records.values()), meta, ExplainArguments.from_json(run_dir / "explain_args.json")


def check_training_set(records: Sequence[dict], train) -> None:
    """Every ``top_train`` entry of the records names a row of ``train`` holding its text and
    label; else the training set is not the run's.

    Raises:
        ValueError: naming the first mismatch and what to pass instead.
    """
    texts, labels = train["text"], train["label"]
    for record in records:
        for entry in record["labels"]:
            for top in entry["top_train"]:
                i = top["train_index"]
                if not (0 <= i < len(texts) and texts[i] == top["text"] and int(labels[i]) == int(top["label"])):
                    raise ValueError(f"the training set is not the run's: query {record['query_index']} names training "
                                     f"row {i} as {top['text']!r}; give the run's training set (same rows, same order, "
                                     "e.g. the same --train-size and --seed as `pairdots explain`)")


def verify_run(run_dir: str | Path, args: VerifyArguments, *, model, tokenizer, train, init_model=None,
               show_progress: bool = False) -> dict:
    """The retraining check of an explanation run (see the module docstring), into
    ``<run_dir>/verify/``; returns the report (also in ``report.json``).

    Args:
        run_dir: folder of ``explain_dataset`` / ``pairdots explain``.
        args: :class:`VerifyArguments`.
        model: the run's trained classifier (``nn.Module``; never changed: jobs copy it).
        tokenizer: its tokenizer.
        train: the run's training set (``datasets.Dataset`` with ``text``, ``label``, same rows
            in the same order).
        init_model: the initial weights for the ``"initial"`` protocol, an ``nn.Module`` or a
            name; default ``args.init_model``.
        show_progress: print one line per finished stage.

    Resumable: ``plan.json`` and every finished job are reused when ``verify_args.json`` holds
    the same options (the execution options ``max_workers``/``num_threads`` may change).
    Under ``accelerate launch`` call it on every process: each retrains its share of the jobs
    on its own GPU, the main process writes the plan and the report.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
        ValueError: no row to check, the training set is not the run's, k too large, or the
            re-measured m at the trained weights differs from the run's saliency (another model).
        IncompatibleRunError: ``run_dir/verify`` holds a check made with other options.
        All before any retraining.
    """
    from accelerate import PartialState

    from .explain import Explainer
    from .modeling import influence_mode

    records, meta, explain_args = read_run(run_dir)
    out = Path(run_dir) / VERIFY_DIR
    state = PartialState()
    rows = measurement_rows(records, args.measurement, explain_args.salient_by, args.max_rows)
    check_training_set(records, train)
    init_model = init_model if init_model is not None else args.init_model
    saved = out / "verify_args.json"
    if saved.is_file():
        differ = args.differences(VerifyArguments.from_dict(json.loads(saved.read_text())))
        if differ:
            raise IncompatibleRunError(f"{out} holds a check made with other options ({', '.join(differ)}); rerun "
                                       "with the options in its verify_args.json or delete the folder")
    plan_path = out / "plan.json"
    [planned] = broadcast_object(plan_path.is_file())  # the main process decides: the plan stage is collective
    if not planned:
        if state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")
        with influence_mode(model) as inner:
            at_start = measure(inner, tokenizer, rows, explain_args)
            _check_recorded(records, rows, at_start)  # before the training-side work
            explainer = Explainer(inner, tokenizer, train["text"], train["label"], explain_args)
            scores = explainer.solve(measurement_gradients(explainer, rows)).scores.double().numpy()
        plan = build_plan(scores, explainer.train_rows, args)
        plan.update(rows=[dataclasses.asdict(row) for row in rows], measured=at_start)
        if state.is_main_process:
            atomic_write_text(plan_path, json.dumps(plan) + "\n")
        if show_progress:
            print(f"verify: planned {len(plan['jobs'])} jobs (k={plan['k']}, n={plan['n']}, rows={len(rows)})")
    state.wait_for_everyone()
    plan = json.loads(plan_path.read_text())
    context = JobContext(model=_cpu_copy(model), init_model=init_model, tokenizer=tokenizer, train=train, rows=rows,
                         explain_args=explain_args, args=args,
                         device=str(state.device) if state.num_processes > 1 else None)
    results = run_jobs(plan["jobs"], context, out / JOBS_DIR, rank=state.process_index,
                       world_size=state.num_processes)
    state.wait_for_everyone()
    results = finished_jobs(out / JOBS_DIR, plan["jobs"], args)
    report = {"run": str(run_dir), "model": meta.get("model"), "measurement": args.measurement, "k": plan["k"],
              "n": plan["n"], "rows": plan["rows"], "measured": plan["measured"], "args": args.to_dict(),
              "protocols": aggregate(plan, results, len(rows))}
    if state.is_main_process:
        write_verify_report(out, report)
    if show_progress:
        print(f"verify: {len(results)}/{len(plan['jobs'])} jobs done; report in {out / 'report.html'}")
    return report


def _cpu_copy(model):
    """The trained model, unwrapped, on the CPU (a copy when it lives elsewhere)."""
    from .modeling import model_device, unwrap_model

    model = unwrap_model(model)
    return copy.deepcopy(model).cpu() if model_device(model).type != "cpu" else model


def _check_recorded(records: Sequence[dict], rows: Sequence[Row], measured: Sequence[float]) -> None:
    """The saliency re-measured at the trained weights equals the recorded one (to 1e-3
    relative, 1e-6 absolute); else the model is not the run's."""
    by_query = {record["query_index"]: record for record in records}
    for row, value in zip(rows, measured):
        if row.word is None:
            continue
        entry = next(e for e in by_query[row.query_index]["labels"] if e["label"] == row.label)
        recorded = row.sign * entry["saliency"][row.word]
        if not math.isclose(value, recorded, rel_tol=1e-3, abs_tol=1e-6):
            raise ValueError(f"query {row.query_index}, label {row.label}: the model gives saliency {value:.6g} for "
                             f"word {row.word}, the run recorded {recorded:.6g}; pass the run's trained model")
