"""Options dataclasses, one per concern, validated on construction, round-trip through JSON.

- :class:`QueryArguments`: which rows of the query split are explained, for which labels, and how
  many responsible training examples are kept;
- :class:`MeasurementArguments`: what is measured and how the model is run: the parameter subset
  θ_S, the saliency of Sec. 3.1 (Eq. 5's measurement), tokenisation and batching, self-influence;
- :class:`EditArguments`: Eq. 8 (responsible words) and the WordNet edit search (Sec. 4.2-4.3);
- :class:`SolverArguments`: how s_test = (H + λI)⁻¹ ∇θ m is solved (App. B);
- :class:`ExplainArguments`: the umbrella of the four, plus where the outputs go; it takes and
  exposes the first three groups' options by name, and saves them flat, as earlier versions did.

Every field carries its ``help`` in ``dataclasses.field(metadata=...)``: ``transformers.HfArgumentParser``
turns the dataclasses into command-line options (the ``Literal`` types of :mod:`hf_pairdots.constants`
into ``choices``), so each default is written once, here. :func:`options_dataclass` picks some
options for a command line that exposes only those.

Every check raises ``ValueError`` with a message that names the argument and the fix; a saved
options file with unknown keys is refused with their names. ``SolverOptions`` is an alias of
:class:`SolverArguments` (its name before the suffixes were unified).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .constants import (CURVATURES, EDIT_MODES, ERASERS, LABEL_ROLES, LAST_PREFIX, MODES, PRESETS, QUERY_SETS,
                        RANKINGS, ROLES, SALIENT_BY, SOLVERS, TARGETS, Curvature, EditMode, Eraser, QuerySet,
                        Ranking, SaliencyMode, SaliencyTarget, SalientBy, Solver)
from .io import atomic_write_text

__all__ = [
    "EditArguments", "ExplainArguments", "MeasurementArguments", "QueryArguments", "SolverArguments",
    "SolverOptions", "options_dataclass", "LABEL_ROLES", "QUERY_SETS", "SOLVERS",
]


def _option(default=dataclasses.MISSING, *, help: str, factory=dataclasses.MISSING, **metadata):
    """A dataclass field with its ``help`` (and any other argparse keyword, e.g. ``choices``) as metadata."""
    return field(default=default, default_factory=factory, metadata={"help": help, **metadata})


class _Serializable:
    """JSON round trip of an options dataclass; :meth:`from_dict` refuses unknown keys by name."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keys :meth:`from_dict` accepts."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping):
        """The options saved by :meth:`to_dict`.

        Raises:
            ValueError: ``data`` is not a mapping, or has keys that are not options of ``cls``
                (all of them named), or a value fails the checks.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.option_names()))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known options: "
                             f"{sorted(cls.option_names())}")
        if "query" not in data:  # a flat file: options added since it was saved take the value it was made with
            data = {**{k: v for k, v in PREDATES.items() if k in cls.option_names()}, **data}
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        """:meth:`from_dict` of a JSON text, or of the JSON file at a path."""
        text = str(text_or_path)
        if not text.lstrip().startswith(("{", "[")):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


PREDATES = {"ranking": "raw"}
"""Options added after saved options files were first written, with the value those files were
made with where it differs from today's default: a saved file without ``ranking`` was ranked raw."""


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{owner}.{name}={value}: must be > 0")


def _choose(owner: str, **values: tuple[object, tuple]) -> None:
    for name, (value, allowed) in values.items():
        if value not in allowed:
            raise ValueError(f"{owner}.{name}={value!r}: use one of {allowed}")


def _preset_or_patterns(value):
    """A parameter subset as :func:`hf_pairdots.autograd.select_parameters` takes it: a preset name
    stays a string, a one-element list naming a preset (what ``--params head`` parses to) becomes
    that string, and other lists (``fnmatch`` patterns) stay lists."""
    if isinstance(value, (list, tuple)):
        value = list(value)
        if len(value) == 1 and isinstance(value[0], str) and (value[0] in PRESETS or value[0].startswith(LAST_PREFIX)):
            return value[0]
    return value


_PARAMS_HELP = ("a preset (" + ", ".join(PRESETS) + f", {LAST_PREFIX}K) or fnmatch patterns over parameter names; "
                "see hf_pairdots.autograd.select_parameters")


@dataclass
class SolverArguments(_Serializable):
    """How to solve (H + λI) s = ∇θ m (App. B). Every field's ``help`` says what it sets.

    ``solver="auto"`` is CG or LiSSA, whichever :func:`hf_pairdots.solve.choose_solver` estimates to
    touch fewer training examples. ``cache_dir`` and ``keep_repeats`` are not part of the cache key
    (:data:`hf_pairdots.cache.NOT_IN_KEY`).
    """

    solver: Solver = _option("auto", help="s_test solver: auto (CG or LiSSA, whichever is estimated to touch fewer "
                                          "training examples; LiSSA when scale, repeat > 1 or keep_repeats is set), "
                                          "lissa (the paper), cg, exact (builds the P x P Hessian: small parameter "
                                          "sets only) or lowrank (top-rank eigenpairs computed once for all queries)")
    damping: float | None = _option(None, help="λ; None = automatic: min_damping plus 1.5 x minus the smallest "
                                               "Hessian eigenvalue (power-iteration estimate), so that H + λI is "
                                               "positive definite")
    scale: float | None = _option(None, help="σ of LiSSA; None = automatic: 1.5 x (largest mini-batch "
                                             "eigenvalue + λ), so that the spectrum of (H + λI)/σ lies inside (0, 1)")
    min_damping: float = _option(0.01, help="smallest λ used when damping is automatic")
    depth: int = _option(200, help="LiSSA recursion steps T")
    repeat: int = _option(1, help="independent LiSSA runs R (results averaged)")
    batch_size: int = _option(128, help="training examples per stochastic HVP in LiSSA")
    seed: int = _option(0, help="seed of the mini-batch sampling and the power-iteration start")
    power_iters: int = _option(20, help="HVPs per power iteration (eigenvalue estimates)")
    cg_tol: float = _option(1e-3, help="CG stopping rule: relative residual")
    cg_max_iter: int = _option(300, help="CG stopping rule: most iterations")
    rank: int = _option(50, help="eigenpairs kept by the low-rank solver")
    lowrank_refine: bool = _option(True, help="low-rank solver only: use the eigenpairs as the preconditioner and "
                                              "starting point of CG on the full Hessian, run to cg_tol; false: "
                                              "return the closed-form inverse of the low-rank approximation (no HVP "
                                              "per query; directions outside the top rank see only the damping)")
    keep_repeats: bool = _option(False, help="LiSSA only: keep the R per-repeat solutions (diagnostics['repeats'], "
                                             "(R, Q, P)) for the top-k stability check of hf_pairdots.stability; "
                                             "with repeat > 1 the spread is reported either way and the Explainer "
                                             "keeps the repeats itself to report the top-k overlap")
    cache_dir: str | None = _option(None, help="folder of an hf_pairdots.cache.STestCache where the Explainer keeps "
                                               "s_test and the training scores of every measurement row and reads "
                                               "them back on a later run; None = no cache")
    curvature: Curvature = _option("hessian", help="the matrix C of (C + λI) s = ∇θ m: hessian (the Hessian of the mean "
                                                  "training loss, indefinite near a fine-tuned optimum, so automatic "
                                                  "damping exceeds -λ_min) or ggn (the Gauss-Newton matrix Jᵀ H_out J, "
                                                  "positive semi-definite: automatic damping stays near min_damping; "
                                                  "same cost per product); see hf_pairdots.curvature; kfac / ekfac "
                                                  "(Kronecker-factored Gauss-Newton over nn.Linear layers, e.g. "
                                                  "params='linear', from curvlinops: fitted once, one to two "
                                                  "passes over the training data, then a closed-form solve; solver "
                                                  "is not used, damping None = min_damping); see hf_pairdots.kfac")

    def __post_init__(self):
        for name in ("keep_repeats", "lowrank_refine"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SolverArguments.{name}={getattr(self, name)!r}: must be True or False")
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        _choose("SolverArguments", solver=(self.solver, SOLVERS), curvature=(self.curvature, CURVATURES))
        _positive("SolverArguments", scale=self.scale, depth=self.depth, repeat=self.repeat,
                  batch_size=self.batch_size, power_iters=self.power_iters, cg_tol=self.cg_tol,
                  cg_max_iter=self.cg_max_iter, rank=self.rank)
        if self.damping is not None and self.damping < 0:
            raise ValueError(f"SolverArguments.damping={self.damping}: must be >= 0 (or None for automatic)")
        if self.min_damping < 0:
            raise ValueError(f"SolverArguments.min_damping={self.min_damping}: must be >= 0")


SolverOptions = SolverArguments
"""The old name of :class:`SolverArguments`, kept as an alias."""


@dataclass
class QueryArguments(_Serializable):
    """What is explained (Sec. 4.1, error analysis): which queries, which of their labels, and how
    many responsible training examples per label. Every field's ``help`` says what it sets."""

    queries: QuerySet = _option("misclassified", help="which rows of the query split to explain: misclassified (dev "
                                                      "errors, the paper's error analysis), all, or indices "
                                                      "(query_indices)")
    query_indices: list[int] | None = _option(None, help="rows of the query split to explain, with queries=indices")
    max_queries: int | None = _option(30, help="explain at most this many (the first ones, in row order); "
                                               "None = all")
    labels: list[str] = _option(factory=lambda: list(LABEL_ROLES), choices=ROLES,
                                help="which labels of a query to explain: predicted (y') and/or gold (y)")
    top_k: int = _option(5, help="responsible training examples kept per explained label")
    ranking: Ranking = _option("unit", help="how the top-k training examples of a measurement are chosen: unit "
                                            "(default: I(z, m) / ||∇θ L(z)||₂ over θ_S, unit-normalised training "
                                            "gradients, which keeps a few large-gradient examples from topping "
                                            "every list) or raw (Eq. 5's I(z, m), the paper); records keep the raw "
                                            "I(z, m); unit costs one per-example gradient pass over the training "
                                            "set per Explainer (docs/explanations.md)")

    def __post_init__(self):
        _choose("QueryArguments", queries=(self.queries, QUERY_SETS), ranking=(self.ranking, RANKINGS))
        if isinstance(self.labels, str) or not self.labels or any(r not in ROLES for r in self.labels):
            raise ValueError(f"QueryArguments.labels={self.labels!r}: use a non-empty subset of {LABEL_ROLES}")
        self.labels = list(self.labels)
        if self.queries == "indices" and not self.query_indices:
            raise ValueError("QueryArguments.query_indices: give the rows to explain when queries='indices'")
        _positive("QueryArguments", max_queries=self.max_queries, top_k=self.top_k)


@dataclass
class MeasurementArguments(_Serializable):
    """What is measured and over which parameters (Sec. 3.1, Eq. 5), how the model is run, and the
    self-influence listing of suspicious training examples. Every field's ``help`` says what it sets.

    ``params`` and ``suspicious_params`` take a preset name or a list of ``fnmatch`` patterns; their
    defaults are factories so that ``HfArgumentParser`` keeps them for these string-or-list fields.
    The cost of ``suspicious`` and the choice of ``suspicious_params`` are measured in
    ``benchmarks/RESULTS.md`` ("Noisy labels").
    """

    params: str | list[str] = _option(factory=lambda: "auto",
                                      help="parameter subset θ_S of influence: " + _PARAMS_HELP + "; auto = the "
                                           "LoRA adapters of a peft model, else pooler + classifier (head)")
    saliency_mode: SaliencyMode = _option("occlusion", help="a word's saliency: occlusion (S_y(x) - S_y(x with the word "
                                                            "erased by `eraser`; the measured default, see "
                                                            "docs/explanations.md), or a reduction of ∂S/∂e: gradient "
                                                            "(the paper's Σ_j ∂S_y/∂e_t,j), grad_x_input, l2")
    saliency_target: SaliencyTarget = _option("prob", help="the score S_y whose gradient saliency takes: prob (the "
                                                           "paper), logprob or margin")
    salient_by: SalientBy = _option("value", help="which word is the most salient and what Eq. 5 measures: value "
                                                  "(the paper: largest signed s(x_t), m = s(x_t)) or magnitude "
                                                  "(largest |s(x_t)|, m = |s(x_t)|)")
    max_length: int = _option(128, help="truncation length in tokens (truncation is reported per query)")
    batch_size: int = _option(64, help="examples per forward pass")
    label_smoothing: float | None = _option(None, help="ε of the label-smoothed cross-entropy the model was trained "
                                                       "with (the loss influence differentiates); None = the "
                                                       "TrainingArguments' label_smoothing_factor under "
                                                       "PairDotsCallback, else 0; single-label only")
    class_weights: list[float] | None = _option(None, help="per-label weights of the cross-entropy the model was "
                                                           "trained with (nn.CrossEntropyLoss(weight=...)), one per "
                                                           "label; None = unweighted; single-label only")
    suspicious: int = _option(0, help="also list this many training examples with the largest self-influence "
                                      "∇θL(z)ᵀ(H + λI)⁻¹∇θL(z) (often mislabelled ones) in suspicious.json and the "
                                      "report, and check them against the ranking by influence on the query "
                                      "split's loss; 0 = off")
    suspicious_params: str | list[str] = _option(factory=lambda: "classifier",
                                                 help="θ_S of the self-influence: " + _PARAMS_HELP + "; classifier "
                                                      "(exact and cheap)")

    def loss_terms(self) -> dict:
        """The keyword arguments of :func:`~hf_pairdots.loss.make_train_loss` these options give
        (``label_smoothing`` None is 0: no smoothing)."""
        return {"label_smoothing": self.label_smoothing or 0.0, "class_weights": self.class_weights}

    def __post_init__(self):
        self.params = _preset_or_patterns(self.params)
        self.suspicious_params = _preset_or_patterns(self.suspicious_params)
        _choose("MeasurementArguments", saliency_mode=(self.saliency_mode, MODES),
                saliency_target=(self.saliency_target, TARGETS), salient_by=(self.salient_by, SALIENT_BY))
        _positive("MeasurementArguments", max_length=self.max_length, batch_size=self.batch_size)
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"MeasurementArguments.label_smoothing={self.label_smoothing}: must lie in [0, 1) "
                             "(or None)")
        if self.class_weights is not None:
            self.class_weights = [float(w) for w in self.class_weights]
        if isinstance(self.suspicious, bool) or not isinstance(self.suspicious, int) or self.suspicious < 0:
            raise ValueError(f"MeasurementArguments.suspicious={self.suspicious!r}: give the number of training "
                             "examples to list (an int >= 0; 0 = off)")


@dataclass
class EditArguments(_Serializable):
    """Responsible words (Eq. 8) and WordNet edits of the top-k training examples (Sec. 4.2-4.3,
    Eq. 9-12; :mod:`hf_pairdots.augment.search`). Every field's ``help`` says what it sets."""

    eraser: Eraser = _option("unk", help="how a word is erased: by Eq. 8 in a training example, and by occlusion saliency "
                                         "in the test text")
    edit: EditMode | None = _option(None, help="also propose a WordNet edit of every top-k training example: fix "
                                               "(gold row: ↑I(z, w_y); predicted row: ↓I(z, w_y'); synonyms and "
                                               "antonyms) or attack (gold row: ↓I(z, w_y); predicted row: "
                                               "↑I(z, w_y'); synonyms only); None = no edits")
    edit_top_k: int | None = _option(None, help="propose edits for only the first this many of the top-k examples "
                                                "(None = all); each edit costs about (1 + num_sampled) x "
                                                "max_candidates forward passes")
    num_sampled: int = _option(5, help="T, random positions of the edit search besides the responsible word")
    max_candidates: int = _option(20, help="substitutes tried per position")
    seed: int = _option(0, help="seed of the edit search")

    def __post_init__(self):
        _choose("EditArguments", eraser=(self.eraser, ERASERS), edit=(self.edit, (None, *EDIT_MODES)))
        _positive("EditArguments", max_candidates=self.max_candidates, edit_top_k=self.edit_top_k)
        if self.num_sampled < 0:
            raise ValueError(f"EditArguments.num_sampled={self.num_sampled}: must be >= 0")


_OUTPUT_SUBDIR = "pairdots"
"""The default sub-folder of the outputs (the field's default, also used by ``__init__``)."""

_GROUPS = {"query": QueryArguments, "measurement": MeasurementArguments, "edits": EditArguments}
"""The umbrella's groups whose options it also takes and exposes by their own names."""


@dataclass(init=False)
class ExplainArguments(_Serializable):
    """What to explain and how: the options of :class:`~hf_pairdots.explain.Explainer`,
    :func:`~hf_pairdots.callback.explain_dataset` and :class:`~hf_pairdots.callback.PairDotsCallback`.

    Built from groups, from the groups' options by name, or both (names then override the groups)::

        ExplainArguments(top_k=3, edit="fix", solver=SolverArguments(solver="cg"))
        ExplainArguments(query=QueryArguments(queries="all"), max_length=64)

    Every option of :class:`QueryArguments`, :class:`MeasurementArguments` and :class:`EditArguments`
    is also an attribute (``args.top_k`` is ``args.query.top_k``; assigning one re-validates its
    group). ``solver`` is a :class:`SolverArguments` (its options are not flattened: ``seed`` and
    ``batch_size`` exist in both). :meth:`to_dict` writes the flat layout of ``explain_args.json``
    (unchanged from the files of earlier versions); :meth:`from_dict` reads it, and the groups
    nested (``{"query": {...}, ...}``) as well.

    Raises:
        TypeError: a keyword that is neither a group, ``output_subdir`` nor a group's option, or a
            group of the wrong type.
        ValueError: a value that fails its group's checks.
    """

    query: QueryArguments = _option(factory=QueryArguments, help="which queries and labels are explained")
    measurement: MeasurementArguments = _option(factory=MeasurementArguments,
                                                help="what is measured, how the model is run")
    edits: EditArguments = _option(factory=EditArguments, help="responsible words and edit search")
    solver: SolverArguments = _option(factory=SolverArguments, help="how s_test is solved")
    output_subdir: str = _option(_OUTPUT_SUBDIR, help="sub-folder of the Trainer's output_dir for the outputs")

    def __init__(self, **options):
        """Keyword-only: the groups (instances or dicts of their options), ``output_subdir``, and
        any option of the flattened groups by name."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise TypeError(f"ExplainArguments: unknown option(s) {unknown}; use the options of "
                            f"{', '.join(c.__name__ for c in _GROUPS.values())}, or solver=SolverArguments(...)")
        self.output_subdir = options.get("output_subdir", _OUTPUT_SUBDIR)
        for name, cls in {**_GROUPS, "solver": SolverArguments}.items():
            group = options.get(name)
            if isinstance(group, Mapping):
                group = cls.from_dict(group)
            elif group is None:
                group = cls()
            elif not isinstance(group, cls):
                raise TypeError(f"ExplainArguments.{name}: expected a {cls.__name__} (or a dict of its options), "
                                f"got {type(group).__name__}")
            own = {key: options[key] for key in cls.option_names() if key in options} if name in _GROUPS else {}
            setattr(self, name, dataclasses.replace(group, **own) if own else group)

    def to_dict(self) -> dict:
        """The flat layout: every option of the flattened groups by name, ``solver`` as a dict, and
        ``output_subdir`` (the keys of ``explain_args.json`` files, old and new)."""
        flat = {name: value for group in _GROUPS for name, value in getattr(self, group).to_dict().items()}
        return {**flat, "solver": self.solver.to_dict(), "output_subdir": self.output_subdir}

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The groups, ``output_subdir``, and every option of the flattened groups."""
        return (*super().option_names(), *(name for group in _GROUPS.values() for name in group.option_names()))

    @classmethod
    def from_flat(cls, values: Mapping) -> ExplainArguments:
        """Options from one flat mapping of option names, e.g. a parsed command line: the groups'
        options go to their groups and the solver's other options to ``solver``; ``seed`` seeds
        both the edit search and the solver (one seed per run).

        Raises:
            TypeError: a name that is no option of the groups or the solver.
        """
        solver_names = set(SolverArguments.option_names())
        explain_names = {"output_subdir", *(name for group in _GROUPS.values() for name in group.option_names())}
        unknown = sorted(set(values) - explain_names - solver_names)
        if unknown:
            raise TypeError(f"ExplainArguments.from_flat: unknown option(s) {unknown}")
        solver = {k: v for k, v in values.items() if k in solver_names and k not in explain_names}
        if "seed" in values:
            solver["seed"] = values["seed"]
        return cls(**{k: v for k, v in values.items() if k in explain_names}, solver=SolverArguments(**solver))


def _flat_property(group: str, name: str, help: str) -> property:
    def get(self):
        return getattr(getattr(self, group), name)

    def set_(self, value):
        setattr(self, group, dataclasses.replace(getattr(self, group), **{name: value}))

    return property(get, set_, doc=f"``{group}.{name}``: {help}")


for _group_name, _group in _GROUPS.items():
    for _field in dataclasses.fields(_group):
        setattr(ExplainArguments, _field.name, _flat_property(_group_name, _field.name, _field.metadata["help"]))


def options_dataclass(name: str, options: Iterable[str], defaults: Mapping | None = None) -> type:
    """A dataclass of some options (type, default and ``help`` of the groups' fields, else of
    :class:`SolverArguments`' fields), for ``transformers.HfArgumentParser``: a command line that
    exposes only these. ``defaults`` replaces some defaults (a recipe's own choices).
    :meth:`ExplainArguments.from_flat` turns the parsed values into options.

    Raises:
        ValueError: a name that is no option, or a default for an option not in ``options``.
    """
    options, defaults = list(options), dict(defaults or {})
    if set(defaults) - set(options):
        raise ValueError(f"options_dataclass: defaults for unlisted options {sorted(set(defaults) - set(options))}")
    made = []
    for option in options:
        owner = next((g for g in (*_GROUPS.values(), SolverArguments) if option in g.option_names()), None)
        if owner is None:
            raise ValueError(f"options_dataclass: {option!r} is no option of ExplainArguments or SolverArguments")
        source = next(f for f in dataclasses.fields(owner) if f.name == option)
        if option in defaults:
            value = defaults[option]
            kind = {"default_factory": lambda value=value: value} if source.default is dataclasses.MISSING \
                else {"default": value}
        elif source.default is dataclasses.MISSING:
            kind = {"default_factory": source.default_factory}
        else:
            kind = {"default": source.default}
        made.append((option, typing.get_type_hints(owner)[option], field(metadata=source.metadata, **kind)))
    return dataclasses.make_dataclass(name, made)
