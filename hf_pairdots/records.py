"""The explanation record, typed: one query's saliency, responsible training examples and edits
(Sec. 4.1 of Meng et al., 2020; the JSON schema is in docs/ARCHITECTURE.md).

:class:`Explanation` (one query) holds a :class:`LabelExplanation` per explained label (Sec. 3.1
saliency, the most salient word), each with its top-k :class:`TrainAttribution` (Eq. 5 influence
on that saliency, Eq. 8 word influence, the responsible word) and, when edits were asked for, a
:class:`ProposedEdit` (Eq. 11-12); :class:`SolveDiagnostics` says how s_test was solved.

``to_dict`` writes today's JSON record, the keys in the order of ``explanations.jsonl``;
``from_dict`` reads one back (also from files written before these classes existed), so
``Explanation.from_dict(d).to_dict() == d`` for every record hf_pairdots writes. Optional keys
(``edit``, the LiSSA-repeat and cache diagnostics) are written only when present.

Sign convention: ``influence`` and ``word_influence`` are I(z, m) = -∇θ m(θ)ᵀ H⁻¹ ∇θ L(z; θ)
(Eq. 4-5): positive means up-weighting the training example raises the saliency of the query's
salient word for that label. Roles: ``"predicted"`` is the wrong label y', ``"gold"`` is y.

Problem types (``Explanation.problem_type``, written only when it is not single-label, so
single-label records are as before): a multi-label record holds multi-hot ``gold`` /
``predicted`` rows, their label names as lists, per-label sigmoid ``probabilities``, and one
entry per wrong label (:func:`hf_pairdots.problem.explained_outputs`); a regression record holds
float ``gold`` / ``predicted`` values, no names and no probabilities, and one entry whose
``value`` is the prediction f(x) (S, the score saliency explains). Training examples keep their
``label`` (a float target, a multi-hot row) and, except for regression, its names.

This module is a leaf: it imports nothing else of hf_pairdots but its constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .constants import REGRESSION, SINGLE_LABEL

__all__ = [
    "Explanation",
    "LabelExplanation",
    "ProposedEdit",
    "SolveDiagnostics",
    "TrainAttribution",
    "as_explanation",
    "check_finite",
]


def check_finite(value, name: str = "record") -> None:
    """Raise ``ValueError`` naming the field (e.g. ``record.labels[0].saliency[2]``) of the first
    NaN or infinite float inside nested dicts/lists ``value``; ``None`` and non-floats pass.

    Cost: one walk over the record. Explanation records must hold finite floats only (JSON has no
    NaN; a non-finite influence means a diverged solve).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} is {value}; explanation records must hold finite floats only")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{name}[{i}]")


EDIT_FIELDS = ("text", "position", "char_start", "char_end", "original", "replacement", "relation",
               "predicted_change", "stage")
"""The keys of a found edit after ``objective``, in the record's order."""


@dataclass
class ProposedEdit:
    """The edit the two-stage search (Eq. 11-12) proposed for one training example, or why there is none.

    Attributes:
        objective: the edit goal (``fix_up``, ``fix_down``, ``attack_up``, ``attack_down``).
        text: the edited training text (``None`` when no edit was found; then ``reason`` says why).
        position: whitespace word index replaced; char_start, char_end: its span in the original text.
        original, replacement: the word and its WordNet substitute; relation: ``synonym`` / ``antonym``.
        predicted_change: I(z, z̃, m) of Eq. 7, the predicted change of the measurement.
        stage: ``two-stage`` or ``sampled`` (or ``random`` for the baseline).
        reason: why no edit was found (``None`` when one was).
    """

    objective: str
    text: str | None = None
    position: int | None = None
    char_start: int | None = None
    char_end: int | None = None
    original: str | None = None
    replacement: str | None = None
    relation: str | None = None
    predicted_change: float | None = None
    stage: str | None = None
    reason: str | None = None

    @property
    def found(self) -> bool:
        """Whether the search found a substitute (``text`` is set)."""
        return self.text is not None

    def to_dict(self) -> dict:
        """``{"objective", "reason"}`` when nothing was found, else ``objective`` and :data:`EDIT_FIELDS`."""
        if not self.found:
            return {"objective": self.objective, "reason": self.reason}
        return {"objective": self.objective, **{name: getattr(self, name) for name in EDIT_FIELDS}}

    @classmethod
    def from_dict(cls, data: Mapping) -> ProposedEdit:
        return cls(objective=data.get("objective"), reason=data.get("reason"),
                   **{name: data.get(name) for name in EDIT_FIELDS})


@dataclass
class TrainAttribution:
    """One responsible training example of an explained label (Eq. 5 and Eq. 8).

    Attributes:
        train_index: its row in the training set the Explainer was given.
        text, label, label_name: the example: its class id and name (single-label), multi-hot row
            and the names of its labels (multi-label), or float target and ``None`` (regression).
        influence: I(z, w_y(e)) of Eq. 5 (sign: module docstring).
        words: its whitespace words; word_influence: Eq. 8 per word, ``None`` for a word with no
            token (not scored); responsible_word: index of the largest scored word influence.
        edit: the proposed edit (``None`` when edits were not asked for, or past ``edit_top_k``).
    """

    train_index: int
    text: str
    label: int | float | list
    label_name: str | list[str] | None
    influence: float
    words: list[str]
    word_influence: list[float | None]
    responsible_word: int
    edit: ProposedEdit | None = None

    def to_dict(self) -> dict:
        """The JSON entry; ``label_name`` left out when it is ``None`` (regression)."""
        out = {"train_index": self.train_index, "text": self.text, "label": self.label,
               "label_name": self.label_name, "influence": self.influence, "words": self.words,
               "word_influence": self.word_influence, "responsible_word": self.responsible_word}
        if self.label_name is None:
            del out["label_name"]
        if self.edit is not None:
            out["edit"] = self.edit.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainAttribution:
        edit = data.get("edit")
        return cls(train_index=data["train_index"], text=data["text"], label=data["label"],
                   label_name=data.get("label_name"), influence=data["influence"], words=data["words"],
                   word_influence=data["word_influence"], responsible_word=data["responsible_word"],
                   edit=None if edit is None else ProposedEdit.from_dict(edit))


@dataclass
class LabelExplanation:
    """One explained label of a query: its saliency map (Sec. 3.1) and responsible training examples.

    Attributes:
        label, label_name: the label y explained (the output index, 0, and ``None`` for regression);
            role: ``"predicted"`` (y'; multi-label: a label predicted but not gold) or ``"gold"``
            (y; multi-label: a gold label not predicted).
        probability: S_y, the model's probability of the label (sigmoid for multi-label); for
            regression the predicted value f(x), written as ``value``.
        saliency: per whitespace word of the query, ``None`` for a word not scored.
        salient_word: index of the most salient word x_t (the measurement's word).
        top_train: the top-k training examples by descending influence.
    """

    label: int
    label_name: str | None
    role: str
    probability: float
    saliency: list[float | None]
    salient_word: int
    top_train: list[TrainAttribution] = field(default_factory=list)

    def to_dict(self, problem_type: str = SINGLE_LABEL) -> dict:
        """The JSON entry; for regression ``{"role", "value", "saliency", "salient_word", "top_train"}``
        (one output: no label, name or probability)."""
        top = [t.to_dict() for t in self.top_train]
        if problem_type == REGRESSION:
            return {"role": self.role, "value": self.probability, "saliency": self.saliency,
                    "salient_word": self.salient_word, "top_train": top}
        return {"label": self.label, "label_name": self.label_name, "role": self.role,
                "probability": self.probability, "saliency": self.saliency, "salient_word": self.salient_word,
                "top_train": top}

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelExplanation:
        """Read one entry (either form of :meth:`to_dict`)."""
        score = data["value"] if "value" in data else data["probability"]
        return cls(label=data.get("label", 0), label_name=data.get("label_name"), role=data["role"],
                   probability=score, saliency=data["saliency"], salient_word=data["salient_word"],
                   top_train=[TrainAttribution.from_dict(t) for t in data["top_train"]])


@dataclass
class SolveDiagnostics:
    """How the s_test of a query's measurements was solved (App. B).

    Attributes:
        solve: the solve-level values, in the record's order: ``solver``, ``damping`` and per
            solver ``scale``, ``depth``, ``repeat``, ``rank``, ``kept_eigenvalues``, eigenvalue
            estimates; ``iterations`` (CG, refined low rank) holds one count per explained label
            (rows read from the cache may come from different solves).
        relative_residual: per explained label, ||(H + λI)s - v|| / ||v||.
        cached: per explained label, whether s_test and its scores were read from the cache.
        repeat_relative_spread: LiSSA with ``repeat > 1``: per explained label, the spread of the
            repeats' s_test relative to their mean; else ``None``.
        topk_overlap: LiSSA with ``repeat > 1``: per explained label, the mean Jaccard similarity
            of the repeats' top-k sets (:func:`hf_pairdots.stability.topk_overlap`); else ``None``.
    """

    solve: dict[str, Any] = field(default_factory=dict)
    relative_residual: list[float] | None = None
    cached: list[bool] | None = None
    repeat_relative_spread: list[float] | None = None
    topk_overlap: list[float] | None = None

    @classmethod
    def per_label_fields(cls) -> tuple[str, ...]:
        """The fields with one entry per explained label, in the record's order (all but ``solve``)."""
        return tuple(f.name for f in fields(cls) if f.name != "solve")

    @property
    def solver(self) -> str | None:
        """The solver that ran (``"cg"``, ``"lissa"``, ``"exact"``, ``"lowrank"``)."""
        return self.solve.get("solver")

    @property
    def damping(self) -> float | None:
        """λ, as resolved."""
        return self.solve.get("damping")

    def to_dict(self) -> dict:
        """The solve-level values, then the per-label fields that are set."""
        out = dict(self.solve)
        out.update({name: getattr(self, name) for name in self.per_label_fields() if getattr(self, name) is not None})
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> SolveDiagnostics:
        """Every key that is not one of :meth:`per_label_fields` is a solve-level value (order kept)."""
        per_label = cls.per_label_fields()
        return cls(solve={k: v for k, v in data.items() if k not in per_label},
                   **{name: data.get(name) for name in per_label})


@dataclass
class Explanation:
    """The explanation of one query: a line of ``explanations.jsonl``.

    Attributes:
        query_index: the query's row in its split; text: its text.
        gold, gold_name: its gold label (``None`` for an unlabelled query): class id and name, multi-hot
            row and the list of its label names (multi-label), float target and ``None`` (regression).
        predicted, predicted_name: the model's prediction, as ``gold``: argmax of ``probabilities``,
            the labels of probability >= 0.5 (multi-label), the predicted value (regression).
        probabilities: softmax over the labels; sigmoid per label (multi-label); ``None`` (regression).
        words: the whitespace words of the text (the unit of saliency).
        truncated_words: words past the model's max length (not scored).
        labels: one :class:`LabelExplanation` per explained label (in ``ExplainArguments.labels`` order).
        diagnostics: :class:`SolveDiagnostics`.
        problem_type: the model's ``config.problem_type`` (:data:`~hf_pairdots.constants.PROBLEM_TYPES`).

    Example::

        >>> record = explainer.explain([Query(0, "a dull film", 1)])[0]
        >>> record.labels[0].top_train[0].influence        # Eq. 5
        >>> json.dumps(record.to_dict())                    # the jsonl line
    """

    query_index: int
    text: str
    gold: int | float | list | None
    gold_name: str | list[str] | None
    predicted: int | float | list
    predicted_name: str | list[str] | None
    probabilities: list[float] | None
    words: list[str]
    truncated_words: int = 0
    labels: list[LabelExplanation] = field(default_factory=list)
    diagnostics: SolveDiagnostics = field(default_factory=SolveDiagnostics)
    problem_type: str = SINGLE_LABEL

    def label(self, role: str) -> LabelExplanation | None:
        """The explained label of ``role`` (``"predicted"`` or ``"gold"``), or ``None``."""
        return next((entry for entry in self.labels if entry.role == role), None)

    def to_dict(self) -> dict:
        """The JSON line. Single-label: the keys of docs/ARCHITECTURE.md; otherwise ``problem_type``
        after ``text``, and for regression no ``gold_name``, ``predicted_name`` or ``probabilities``."""
        head = {"query_index": self.query_index, "text": self.text}
        if self.problem_type != SINGLE_LABEL:
            head["problem_type"] = self.problem_type
        labels = {"gold": self.gold, "gold_name": self.gold_name, "predicted": self.predicted,
                  "predicted_name": self.predicted_name, "probabilities": self.probabilities}
        if self.problem_type == REGRESSION:
            labels = {"gold": self.gold, "predicted": self.predicted}
        return {**head, **labels, "words": self.words, "truncated_words": self.truncated_words,
                "labels": [entry.to_dict(self.problem_type) for entry in self.labels],
                "diagnostics": self.diagnostics.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Explanation:
        """Read one record (today's schema; ``truncated_words`` and ``diagnostics`` may be absent).

        Raises:
            ValueError: a required field is missing (named).
        """
        try:
            kind = data.get("problem_type", SINGLE_LABEL)
            named = kind != REGRESSION  # regression records have no names and no probabilities
            return cls(query_index=data["query_index"], text=data["text"], gold=data["gold"],
                       gold_name=data.get("gold_name"), predicted=data["predicted"],
                       predicted_name=data["predicted_name"] if named else None,
                       probabilities=data["probabilities"] if named else None,
                       words=data["words"], truncated_words=data.get("truncated_words", 0),
                       labels=[LabelExplanation.from_dict(entry) for entry in data["labels"]],
                       diagnostics=SolveDiagnostics.from_dict(data.get("diagnostics", {})), problem_type=kind)
        except KeyError as err:
            raise ValueError(f"explanation record {data.get('query_index', '?')} lacks the field {err}; "
                             "see docs/ARCHITECTURE.md for the schema") from None

    def check_finite(self) -> None:
        """:func:`check_finite` of :meth:`to_dict` (ValueError naming the field)."""
        check_finite(self.to_dict())


def as_explanation(record: Explanation | Mapping) -> Explanation:
    """``record`` itself, or the :class:`Explanation` read from a JSON dict (:meth:`Explanation.from_dict`)."""
    return record if isinstance(record, Explanation) else Explanation.from_dict(record)
