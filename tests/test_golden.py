"""A fixed small run (tiny BERT, seed 0, fixing edits) gives the same records, edits, augmented
training set and report as the stored ``tests/golden/run.json``: refactoring must not change
behaviour. Regenerate with ``python tests/golden/make_golden.py`` only for an intended change,
named in the commit.

Every string, integer, key, order and choice (which words, which training examples, which edits)
must be equal. Floats are equal bit for bit on the machine that wrote the file; another CPU's
kernels (a different vector unit) move the tiny model's trained weights in the fifth digit, so
floats are compared to ``RTOL``, and the report with its printed numbers masked.
For a refactor, rerun ``make_golden.py`` on the parent commit first and compare bitwise there.
"""

import json
import math
import re
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from make_golden import golden_run  # noqa: E402

RTOL = 1e-2
"""Relative tolerance of a float across CPUs (measured between two runners: 1e-4 typically, 5e-3
on the smallest differences of near-equal values, such as a 4e-10 predicted change)."""

RESIDUAL_RTOL = 0.2
"""The solver's relative residual at the CG stop is a diagnostic below ``cg_tol``, not a result: it
moves by 3 % between runners."""

NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")


def assert_close(actual, expected, path="run", scale=0.0):
    """Equal structure and non-float values; floats to ``RTOL`` of themselves or of ``scale``, the
    largest magnitude among their siblings in a list (a near-zero word influence beside the
    sentence's large one is a difference of near-equal values, and moves more)."""
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        rtol = RESIDUAL_RTOL if path.rsplit(".", 1)[-1].startswith("relative_residual") else RTOL
        assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=rtol * scale), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{path}: keys differ"
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: lengths differ"
        scale = max((abs(e) for e in expected if isinstance(e, float)), default=0.0)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{path}[{i}]", scale)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_report_close(actual: str, expected: str):
    """The same HTML once its printed numbers are masked: words, order, colours' signs, sections
    and formats. The values behind the numbers are the records', checked by :func:`assert_close`."""
    assert NUMBER.sub("#", actual) == NUMBER.sub("#", expected)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return json.loads(json.dumps(golden_run(tmp_path_factory.mktemp("golden") / "run"), sort_keys=True))


@pytest.fixture(scope="module")
def stored():
    return json.loads((GOLDEN / "run.json").read_text())


@pytest.mark.parametrize("part", ["summary", "records", "shortfalls", "edits", "augmented"])
def test_golden_run_unchanged(result, stored, part):
    assert_close(result[part], stored[part], part)


def test_golden_report_unchanged(result, stored):
    assert_report_close(result["report"], stored["report"])


def test_golden_comparison_can_fail(stored):
    """The comparison catches a changed choice and a float off by more than a CPU's rounding."""
    changed = json.loads(json.dumps(stored))
    changed["records"][0]["labels"][0]["top_train"][0]["train_index"] += 1
    with pytest.raises(AssertionError):
        assert_close(changed["records"], stored["records"])
    changed = json.loads(json.dumps(stored))
    changed["summary"]["mean_top1_influence"] *= 1.05
    with pytest.raises(AssertionError):
        assert_close(changed["summary"], stored["summary"])
    with pytest.raises(AssertionError):
        assert_report_close(stored["report"].replace("train #", "train no. ", 1), stored["report"])


def test_golden_run_makes_edits(stored):
    """The fixture exercises the whole loop: every query explained, edits made and applied."""
    assert len(stored["records"]) == 6 and len(stored["edits"]) >= 6
    assert sum(row["edited"] for row in stored["augmented"]) == len(stored["edits"])
