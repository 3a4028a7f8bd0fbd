"""The edit goals of Sec. 4.2-4.3 (Table 4) of Meng et al. (2020), as one table.

An *edit goal* (:class:`EditGoal`) says which saliency w(e) an edit of a training example should
move and in which direction, which WordNet relations it may use, and whether the edited
example replaces its source row (attack) or is added to the training set (fixing):

=================  ==========  =============  =========  ====================  =====================
goal               mode        measurement    direction  substitutes           paper
=================  ==========  =============  =========  ====================  =====================
``attack_down``    attack      w_y  (gold)    decrease   synonyms              Eq. 9, ↓I(z, w_y)
``attack_up``      attack      w_y' (wrong)   increase   synonyms              Eq. 10, ↑I(z, w_y')
``fix_up``         fix         w_y  (gold)    increase   synonyms + antonyms   Sec. 4.3, ↑I(z, w_y)
``fix_down``       fix         w_y' (wrong)   decrease   synonyms + antonyms   Sec. 4.3, ↓I(z, w_y')
=================  ==========  =============  =========  ====================  =====================

The *role* of a goal is the explained label row whose saliency it moves: ``"gold"`` (y) or
``"predicted"`` (y', a wrong label). An explanation made with ``ExplainArguments(edit=mode)``
gives each top-k training example of a label row the edit of :meth:`EditGoal.for_role`.

A dataset-level objective is a *group* of goals (:class:`GoalGroup`, :data:`GOAL_GROUPS`):
each goal alone, plus Table 4's "Combined" attack (``attack_combined`` = ``attack_down`` and
``attack_up`` alternated rank by rank) and both fixing directions (``fix`` = ``fix_up`` and
``fix_down`` alternated). A group knows the ``ExplainArguments.edit`` (:attr:`GoalGroup.mode`)
and ``ExplainArguments.labels`` (:attr:`GoalGroup.labels`) that produce its edits.

Every module (search, dataset builder, explainer, dataset card, CLI, recipes) reads goals,
their titles and descriptions from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import EDIT_MODES, ROLES

__all__ = ["EDIT_MODES", "GOALS", "GOAL_GROUPS", "ROLES", "EditGoal", "GoalGroup", "edit_goal", "goal_group"]


@dataclass(frozen=True)
class EditGoal:
    """One search goal of Sec. 4.2-4.3.

    Attributes:
        name: ``attack_down``, ``attack_up``, ``fix_up`` or ``fix_down``.
        role: the label row whose saliency is moved, ``"gold"`` (y) or ``"predicted"`` (y').
        direction: the sign of the wanted change of that saliency, +1 increase, -1 decrease; the
            search maximises ``direction x I(z, z̃, m)`` (Eq. 7).
        relations: the WordNet relations substitutes may come from.
        replace: the edited example replaces its source row (attack) instead of being added.
        title: a short label for tables and cards, e.g. ``"↓I(z, w_y)"``.
        description: one sentence for the dataset card.
    """

    name: str
    role: str
    direction: int
    relations: tuple[str, ...]
    replace: bool
    title: str = ""
    description: str = ""

    @property
    def mode(self) -> str:
        """``"attack"`` or ``"fix"``: the ``ExplainArguments.edit`` that proposes this goal's edits."""
        return "attack" if self.replace else "fix"

    @classmethod
    def for_role(cls, mode: str, role: str) -> EditGoal:
        """The goal of a label row with role ``role`` under ``ExplainArguments.edit=mode``:
        attack -> gold ``attack_down``, predicted ``attack_up``; fix -> gold ``fix_up``,
        predicted ``fix_down``.

        Raises:
            ValueError: ``mode`` not in :data:`EDIT_MODES` or ``role`` not in :data:`ROLES`.
        """
        for goal in GOALS.values():
            if goal.mode == mode and goal.role == role:
                return goal
        raise ValueError(f"no edit goal for mode={mode!r}, role={role!r}: mode is one of {EDIT_MODES}, "
                         f"role one of {ROLES}")


GOALS = {goal.name: goal for goal in (
    EditGoal("attack_down", "gold", -1, ("synonym",), True, "↓I(z, w_y)",
             "↓I(z, w_y): edits that lower the saliency of the word the model attends to for the gold "
             "label y (Eq. 9, synonyms only)"),
    EditGoal("attack_up", "predicted", +1, ("synonym",), True, "↑I(z, w_y')",
             "↑I(z, w_y'): edits that raise the saliency, for a wrong label y', of the word it would "
             "attend to (Eq. 10, synonyms only)"),
    EditGoal("fix_up", "gold", +1, ("synonym", "antonym"), False, "↑I(z, w_y)",
             "↑I(z, w_y): edits that raise the saliency for the gold label y of a misclassified example "
             "(Sec. 4.3, synonyms and antonyms)"),
    EditGoal("fix_down", "predicted", -1, ("synonym", "antonym"), False, "↓I(z, w_y')",
             "↓I(z, w_y'): edits that lower the saliency for the wrongly predicted label y' "
             "(Sec. 4.3, synonyms and antonyms)"),
)}
"""Goal name -> :class:`EditGoal`."""


@dataclass(frozen=True)
class GoalGroup:
    """A dataset-level objective: the goals it alternates rank by rank, in that order.

    Attributes:
        name: a key of :data:`GOAL_GROUPS`.
        goals: names of its :data:`GOALS`, all of one mode.
        title, description: as for :class:`EditGoal` (a single goal's own).
    """

    name: str
    goals: tuple[str, ...]
    title: str
    description: str

    @property
    def members(self) -> tuple[EditGoal, ...]:
        """The :class:`EditGoal` objects of :attr:`goals`, in order."""
        return tuple(GOALS[name] for name in self.goals)

    @property
    def replace(self) -> bool:
        """Whether the group's edits replace training rows (attack) rather than add to them."""
        return self.members[0].replace

    @property
    def mode(self) -> str:
        """``"attack"`` or ``"fix"``: the ``ExplainArguments.edit`` that proposes its edits."""
        return self.members[0].mode

    @property
    def labels(self) -> tuple[str, ...]:
        """The ``ExplainArguments.labels`` its edits need, gold first (so that a correctly
        classified query, whose predicted label is its gold label, gets its gold row)."""
        roles = {goal.role for goal in self.members}
        return tuple(role for role in ROLES if role in roles)


def _single(name: str) -> GoalGroup:
    goal = GOALS[name]
    return GoalGroup(name, (name,), goal.title, goal.description)


GOAL_GROUPS = {group.name: group for group in (
    _single("attack_down"),
    _single("attack_up"),
    GoalGroup("attack_combined", ("attack_down", "attack_up"), "combined",
              "Combined (Table 4): ↓I(z, w_y) and ↑I(z, w_y') edits alternated per query (synonyms only)"),
    _single("fix_up"),
    _single("fix_down"),
    GoalGroup("fix", ("fix_up", "fix_down"), "fix (↑I(z, w_y) / ↓I(z, w_y'))",
              "↑I(z, w_y) and ↓I(z, w_y') edits alternated per misclassified query (Sec. 4.3, synonyms and "
              "antonyms)"),
)}
"""Dataset-level objective name -> :class:`GoalGroup`."""


def edit_goal(goal: EditGoal | str) -> EditGoal:
    """``goal`` itself, or the :class:`EditGoal` of that name.

    Raises:
        ValueError: not a goal name (a group name such as ``attack_combined`` included).
    """
    if isinstance(goal, EditGoal):
        return goal
    if goal not in GOALS:
        raise ValueError(f"objective {goal!r}: use one of {sorted(GOALS)} "
                         f"(groups such as 'attack_combined' are resolved by the dataset builder)")
    return GOALS[goal]


def goal_group(name: str) -> GoalGroup:
    """The :class:`GoalGroup` called ``name``.

    Raises:
        ValueError: not a key of :data:`GOAL_GROUPS`.
    """
    if name not in GOAL_GROUPS:
        raise ValueError(f"objective {name!r}: use one of {list(GOAL_GROUPS)}")
    return GOAL_GROUPS[name]
