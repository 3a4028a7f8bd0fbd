"""Shared infrastructure: atomic writes, the error hierarchy, the public API, the edit-goal table,
the packaged card template and the declared dependencies."""

import argparse
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import datasets
import pytest
import torch

import hf_pairdots
from hf_pairdots import errors, hub, report
from hf_pairdots.augment import goals, search
from hf_pairdots.augment.dataset import explain_labels, explain_mode
from hf_pairdots.cache import STestCache, cache_key
from hf_pairdots.io import atomic_replace_dir, atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- atomic writes


def _failing_replace(monkeypatch, fail_on: set[int]):
    """Make the calls number ``fail_on`` (1-based) of ``os.replace`` raise; returns the call log."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) in fail_on:
            raise OSError(f"simulated failure of rename #{len(calls)}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("write", [lambda p: atomic_write_text(p, "new \u00e9"),
                                   lambda p: atomic_write_bytes(p, b"new")])
def test_failed_atomic_write_keeps_the_old_content_and_no_temp(tmp_path, monkeypatch, write):
    path = tmp_path / "a.txt"
    path.write_text("old")
    _failing_replace(monkeypatch, {1})
    with pytest.raises(OSError, match="simulated failure"):
        write(path)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    write(path)
    assert path.read_bytes() in ("new \u00e9".encode(), b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _fsynced_kinds(monkeypatch) -> list[str]:
    """Record what every ``os.fsync`` call flushes: ``"file"`` or ``"dir"``."""
    real, kinds = os.fsync, []

    def fsync(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return kinds


@pytest.mark.skipif(os.name == "nt", reason="folders cannot be fsynced on Windows")
def test_every_atomic_file_write_flushes_the_file_and_its_folder(tmp_path, monkeypatch):
    kinds = _fsynced_kinds(monkeypatch)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert kinds == ["file", "dir"]
    kinds.clear()
    STestCache(tmp_path / "cache").put(cache_key("k"), torch.arange(3.0))  # the cache used to skip the folder
    assert kinds == ["file", "dir"]


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "data.txt").write_text(text)
    return path


def test_atomic_replace_dir_swaps_a_whole_folder(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with atomic_replace_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not any(tmp.iterdir())
        (tmp / "data.txt").write_text("new")
        assert (target / "data.txt").read_text() == "old"  # untouched until the block ends
    assert (target / "data.txt").read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old copy left
    with atomic_replace_dir(tmp_path / "a" / "fresh") as tmp:  # parents are created
        (tmp / "data.txt").write_text("first")
    assert (tmp_path / "a" / "fresh" / "data.txt").read_text() == "first"


def test_atomic_replace_dir_leaves_the_target_when_the_block_fails(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_replace_dir(target) as tmp:
            (tmp / "data.txt").write_text("half")
            raise KeyboardInterrupt
    assert (target / "data.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_replace_dir_rolls_back_when_the_new_folder_cannot_be_moved_in(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", "old")
    calls = _failing_replace(monkeypatch, {2})  # #1 moves the old folder aside, #2 would move the new one in
    with pytest.raises(OSError, match="rename #2"):
        with atomic_replace_dir(target) as tmp:
            (tmp / "data.txt").write_text("new")
    assert len(calls) == 3 and calls[2][1] == "out"  # #3 put the old folder back
    assert (target / "data.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_rollback_says_where_the_old_folder_is(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", "old")
    _failing_replace(monkeypatch, {2, 3})
    with pytest.raises(OSError, match="rename #2") as info:
        with atomic_replace_dir(target) as tmp:
            (tmp / "data.txt").write_text("new")
    kept = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(kept) == 1 and (kept[0] / "data.txt").read_text() == "old"
    assert any(str(kept[0]) in note for note in info.value.__notes__)


def _train() -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])})
    return datasets.Dataset.from_dict({"text": ["a good film", "a dull film"], "label": [1, 0]}, features=features)


def test_write_dataset_rolls_back_a_failed_swap(tmp_path, monkeypatch):
    out = tmp_path / "records"
    report.write_dataset([{"query_index": 1}], out)
    _failing_replace(monkeypatch, {2})
    with pytest.raises(OSError, match="rename #2"):
        report.write_dataset([{"query_index": 2}], out)
    monkeypatch.undo()
    assert datasets.load_from_disk(str(out))["query_index"] == [1]  # the previous copy, whole
    assert [p.name for p in tmp_path.iterdir()] == ["records"]


def test_save_augmented_rolls_back_a_failed_swap(tmp_path, monkeypatch):
    out, info = tmp_path / "aug", hub.CardInfo(source="local", model="m", objective="fix")
    hub.save_augmented(_train(), out, info)
    _failing_replace(monkeypatch, {2})
    with pytest.raises(OSError, match="rename #2"):
        hub.save_augmented(_train().select([0]), out, info)
    monkeypatch.undo()
    assert len(datasets.load_from_disk(str(out))) == 2 and (out / hub.CARD_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["aug"]


def test_report_keeps_its_atomic_write_name():
    assert report.atomic_write_text is atomic_write_text


# ---------------------------------------------------------------------------------- errors


OLD_HOMES = {
    "SaliencyError": "hf_pairdots.saliency",
    "LissaDivergenceError": "hf_pairdots.ihvp",
    "WordNetUnavailable": "hf_pairdots.augment.lexicon",
    "HubUnavailable": "hf_pairdots.hub",
}


@pytest.mark.parametrize("name", [*OLD_HOMES, "IncompatibleRunError"])
def test_every_error_is_a_pairdots_error_and_keeps_its_old_base(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.PairDotsError) and issubclass(cls, RuntimeError)
    assert getattr(hf_pairdots, name) is cls
    if name in OLD_HOMES:
        module = __import__(OLD_HOMES[name], fromlist=[name])
        assert getattr(module, name) is cls  # the old import path
    with pytest.raises(RuntimeError):  # an old `except RuntimeError` still catches it
        raise cls("x")
    assert not issubclass(errors.PairDotsError, RuntimeError)


def test_the_indefinite_hessian_error_is_a_pairdots_error_and_stays_a_value_error():
    from hf_pairdots import ihvp

    cls = errors.IndefiniteHessianError
    assert issubclass(cls, errors.PairDotsError) and issubclass(cls, ValueError) and not issubclass(cls, RuntimeError)
    assert hf_pairdots.IndefiniteHessianError is cls and ihvp.IndefiniteHessianError is cls  # the old import path
    assert "IndefiniteHessianError" in hf_pairdots.__all__ and "IndefiniteHessianError" in errors.__all__
    with pytest.raises(ValueError, match="Set damping above 0.5") as caught:  # an old `except ValueError`
        ihvp.check_positive_definite(-0.5, 0.1)
    assert (caught.value.lambda_min, caught.value.damping) == (-0.5, 0.1)


# ---------------------------------------------------------------------------------- public API


def test_every_public_name_resolves():
    assert len(set(hf_pairdots.__all__)) == len(hf_pairdots.__all__)
    for name in hf_pairdots.__all__:
        assert getattr(hf_pairdots, name) is not None, name
    from hf_pairdots.callback import PairDotsCallback
    from hf_pairdots.saliency import saliency

    assert hf_pairdots.PairDotsCallback is PairDotsCallback and hf_pairdots.word_saliency is saliency
    import hf_pairdots.saliency as saliency_module  # the submodule is not shadowed by the function

    assert saliency_module.saliency is saliency
    namespace: dict = {}
    exec("from hf_pairdots import *", namespace)
    assert set(hf_pairdots.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        hf_pairdots.nothing  # noqa: B018


def test_importing_the_package_is_cheap():
    code = "import sys, hf_pairdots; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- edit goals

# Sec. 4.2 (Eq. 9-10, Table 4) and Sec. 4.3 of Meng et al. (2020), written out by hand:
# goal: (mode, role of the label row moved, direction, WordNet relations, replaces its row, title)
PAPER_GOALS = {
    "attack_down": ("attack", "gold", -1, ("synonym",), True, "↓I(z, w_y)"),  # Eq. 9
    "attack_up": ("attack", "predicted", +1, ("synonym",), True, "↑I(z, w_y')"),  # Eq. 10
    "fix_up": ("fix", "gold", +1, ("synonym", "antonym"), False, "↑I(z, w_y)"),  # Sec. 4.3
    "fix_down": ("fix", "predicted", -1, ("synonym", "antonym"), False, "↓I(z, w_y')"),  # Sec. 4.3
}
# dataset-level objective: (goals alternated, ExplainArguments.edit, ExplainArguments.labels, title)
PAPER_GROUPS = {
    "attack_down": (("attack_down",), "attack", ("gold",), "↓I(z, w_y)"),
    "attack_up": (("attack_up",), "attack", ("predicted",), "↑I(z, w_y')"),
    "attack_combined": (("attack_down", "attack_up"), "attack", ("gold", "predicted"), "combined"),  # Table 4
    "fix_up": (("fix_up",), "fix", ("gold",), "↑I(z, w_y)"),
    "fix_down": (("fix_down",), "fix", ("predicted",), "↓I(z, w_y')"),
    "fix": (("fix_up", "fix_down"), "fix", ("gold", "predicted"), "fix (↑I(z, w_y) / ↓I(z, w_y'))"),
}


def test_goal_table_is_the_papers():
    assert list(goals.GOALS) == list(PAPER_GOALS)
    for name, (mode, role, direction, relations, replace, title) in PAPER_GOALS.items():
        goal = goals.GOALS[name]
        assert (goal.name, goal.mode, goal.role, goal.direction, goal.relations, goal.replace, goal.title) == \
            (name, mode, role, direction, relations, replace, title)
        assert goal.description.startswith(title + ":")
        assert goals.EditGoal.for_role(mode, role) is goal  # what the explainer asks
        assert goals.edit_goal(name) is goal and goals.edit_goal(goal) is goal
    with pytest.raises(ValueError, match="mode is one of"):
        goals.EditGoal.for_role("attack", "runner-up")
    with pytest.raises(ValueError, match="groups such as 'attack_combined'"):
        goals.edit_goal("attack_combined")


def test_group_table_agrees_with_explain_mode_and_labels():
    assert list(goals.GOAL_GROUPS) == list(PAPER_GROUPS)
    for name, (members, mode, labels, title) in PAPER_GROUPS.items():
        group = goals.GOAL_GROUPS[name]
        assert (group.goals, group.mode, group.labels, group.title) == (members, mode, labels, title)
        assert explain_mode(name) == mode and explain_labels(name) == labels
        assert {goal.mode for goal in group.members} == {mode}
        assert group.replace == (mode == "attack")
    with pytest.raises(ValueError, match="use one of"):
        explain_mode("attack")


def test_every_module_reads_the_goal_table():
    assert search.SearchObjective is goals.EditGoal and search.OBJECTIVES is goals.GOALS  # the old names
    assert search.OBJECTIVE_GROUPS == {name: group.goals for name, group in goals.GOAL_GROUPS.items()}
    from hf_pairdots.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    objective = next(a for a in sub.choices["augment"]._actions if a.dest == "objective")
    assert list(objective.choices) == list(goals.GOAL_GROUPS)
    card = hub.render_card(_train(), hub.CardInfo(source="local", model="m", objective="attack_combined"))
    assert goals.GOAL_GROUPS["attack_combined"].description in card
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "recipes"))
    assert common.OBJECTIVE_TITLES == {name: group[3] for name, group in PAPER_GROUPS.items()}


# ---------------------------------------------------------------------------------- packaging


def test_card_template_is_package_data_only():
    template = hub.card_template_path()
    assert Path(str(template)) == Path(hf_pairdots.__file__).parent / "templates" / hub.CARD_TEMPLATE
    assert not (REPO / "model_cards" / hub.CARD_TEMPLATE).exists()  # one copy
    assert "{{ objective_description }}" in template.read_text(encoding="utf-8")


def test_declared_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip().lower() for dep in project["dependencies"]}
    assert {"scipy", "safetensors", "huggingface_hub", "numpy"} <= names  # imported by the library at run time
    assert "scikit-learn" not in names  # imported nowhere
