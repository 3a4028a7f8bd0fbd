"""A fixed small run (tiny BERT, seed 0, fixing edits) gives the same records, edits, augmented
training set and report as the stored ``tests/golden/run.json``, bit for bit: refactoring must
not change behaviour. Regenerate with ``python tests/golden/make_golden.py`` only for an intended
change, named in the commit."""

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from make_golden import golden_run  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return json.loads(json.dumps(golden_run(tmp_path_factory.mktemp("golden") / "run"), sort_keys=True))


@pytest.fixture(scope="module")
def stored():
    return json.loads((GOLDEN / "run.json").read_text())


@pytest.mark.parametrize("part", ["summary", "records", "shortfalls", "edits", "augmented", "report"])
def test_golden_run_unchanged(result, stored, part):
    assert result[part] == stored[part]


def test_golden_run_makes_edits(stored):
    """The fixture exercises the whole loop: every query explained, edits made and applied."""
    assert len(stored["records"]) == 6 and len(stored["edits"]) >= 6
    assert sum(row["edited"] for row in stored["augmented"]) == len(stored["edits"])
