"""End to end tests of recipes/attack.py (Sec. 4.2, Table 4) and recipes/fix.py (Sec. 4.3,
Figure 2) on a tiny BERT and a tiny synthetic SST-format data set (offline, seconds)."""

from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

POSITIVE = ["good", "great", "excellent", "wonderful", "fine"]
NEGATIVE = ["bad", "terrible", "awful", "poor", "dreadful"]
FILLER = ["movie", "film", "story", "actor", "plot", "scene", "music", "picture", "ending", "script",
          "cast", "show", "director", "role", "drama"]


def _sentences(n: int, rng: random.Random, strong: bool = True):
    lines = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        words.insert(rng.randint(0, len(words)), cue)
        if strong:
            words.insert(rng.randint(0, len(words)), cue)
        lines.append(f"{label} {' '.join(words)}")
    return lines


def write_data(folder: Path, n_train: int = 80, n_dev: int = 24, n_test: int = 24, seed: int = 0) -> Path:
    """stsa.binary.{train,dev,test} with a planted signal: the sentiment word decides the label."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        (folder / f"stsa.binary.{split}").write_text("\n".join(_sentences(n, rng)) + "\n")
    return folder


def write_config(tmp_path: Path, **extra) -> Path:
    data = write_data(tmp_path / "data")
    config = {"data": str(data), "hub": None, "model": "tiny", "train_size": 0, "subsample_seed": 0, "init_seed": 0,
              "dev_size": 0, "test_size": 0, "num_queries": 4, "epochs": 6, "learning_rate": 2e-3, "batch_size": 16,
              "max_length": 16, "seeds": [0, 1], "ks": [1, 2], "fix_ks": [1, 2], "params": "head", "depth": 20,
              "max_candidates": 4, "num_sampled": 2, "top_k": None,
              "paper_scale": {"model": "bert-base-uncased", "train_size": 0}}
    config.update(extra)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


def _recipe(name):
    return importlib.import_module(name)


CARD_FIELDS = ("## Base model", "## Data", "## Edits made and how", "## Metrics", "## Intended use and limits",
               "## Citation", "meng2020pairthedots")


def _check_cards(out: Path, results: dict):
    cards = sorted((out / "cards").glob("*/README.md"))
    assert len(cards) == len(results)
    for card in cards:
        text = card.read_text()
        for field in CARD_FIELDS:
            assert field in text, (card, field)


def test_attack_end_to_end_and_resume(tmp_path, monkeypatch):
    attack = _recipe("attack")
    config = write_config(tmp_path)
    out = tmp_path / "attack"
    results = attack.main(["--config", str(config), "--out", str(out)])
    # unedited x 2 seeds + (3 objectives + 3 random) x 2 ks x 2 seeds
    assert len(results) == 2 + 6 * 2 * 2
    for name in ("results.json", "table4.md", "attack_accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "attack_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "table4.md").read_text()
    assert "| 0 (unedited) |" in table and "| 2 |" in table and "random" in table
    assert any(r["edits"] > 0 for key, r in results.items() if not key.startswith("unedited"))
    _check_cards(out, results)

    import common

    def fail(*a, **k):
        raise AssertionError("a finished setting was retrained")

    monkeypatch.setattr(common, "train_model", fail)
    again = attack.main(["--config", str(config), "--out", str(out)])
    assert again == results


def test_fix_end_to_end_and_resume(tmp_path, monkeypatch):
    fix = _recipe("fix")
    config = write_config(tmp_path, epochs=1, learning_rate=5e-4)  # undertrained: leaves dev errors to fix
    out = tmp_path / "fix"
    results = fix.main(["--config", str(config), "--out", str(out)])
    for name in ("results.json", "figure2.md", "figure2_dev.md", "figure2_test.md", "figure2_dev.png",
                 "figure2_test.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    keys = set(results)
    for seed in (0, 1):
        assert f"unedited|k=0|seed={seed}" in keys
        for k in (1, 2):
            assert f"fix|k={k}|seed={seed}" in keys and f"random:fix|k={k}|seed={seed}" in keys
            r, b = results[f"fix|k={k}|seed={seed}"], results[f"random:fix|k={k}|seed={seed}"]
            assert r["train_rows"] == 80 + r["edits"] and b["train_rows"] == 80 + b["edits"]
            assert {"dev_accuracy", "test_accuracy"} <= set(r)
    assert "| 0 (unedited) | " in (out / "figure2_dev.md").read_text()
    assert "(n=2)" in (out / "figure2_dev.md").read_text().split("| 0 (unedited) |")[1].split("\n")[0]
    assert all(results[f"{m}|k=0|seed={s}"]["objective"] == m for m in ("fix", "random:fix") for s in (0, 1))
    assert any(results[f"fix|k=2|seed={s}"]["edits"] > 0 for s in (0, 1)), "no dev error was fixed by an edit"
    _check_cards(out, {k: v for k, v in results.items() if "|k=0|" not in k or k.startswith("unedited")})

    import common

    monkeypatch.setattr(common, "train_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = fix.main(["--config", str(config), "--out", str(out)])
    assert again == results


def test_configs_and_paper_scale():
    import common

    for name in ("sst2", "sst5", "imdb", "agnews"):
        small = common.load_config(name)
        paper = common.load_config(name, paper_scale=True)
        for key in ("train_size", "num_queries", "epochs", "max_length", "learning_rate", "seeds", "ks"):
            assert key in small and key in paper, (name, key)
        assert paper["model"] == "bert-base-uncased" and paper["train_size"] == 0
        assert paper["ks"] == [1, 2, 6, 10, 20]
    assert common.resolve_data({"data": "/no/such/folder", "hub": "glue/sst2"}) == "glue/sst2"


CUES = {1: ["excellent", "wonderful", "brilliant", "superb", "delightful", "charming"],
        0: ["terrible", "awful", "dreadful", "boring", "stupid", "horrible"]}


def _cue_sentence(rng: random.Random, cue: str) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 5))]
    words.insert(rng.randint(0, len(words)), cue)
    return " ".join(words)


def write_cue_data(folder: Path, per_cue: int = 6, seed: int = 0) -> Path:
    """A planted signal the attack can reach: 12 cue words (6 per label, each with WordNet
    synonyms) decide the label; each cue occurs in exactly ``per_cue`` training sentences and the
    8 test queries hold one cue each, so editing a query's few responsible rows can take its
    evidence away, while random edits of the same rows mostly hit the filler words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cues = [(label, cue) for label in (1, 0) for cue in CUES[label]]
    train = [f"{label} {_cue_sentence(rng, cue)}" for label, cue in cues for _ in range(per_cue)]
    rng.shuffle(train)
    test = [f"{label} {_cue_sentence(rng, CUES[label][i])}" for i in range(4) for label in (1, 0)]
    dev = [f"{label} {_cue_sentence(rng, cue)}" for label, cue in cues]
    for split, lines in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"stsa.binary.{split}").write_text("\n".join(lines) + "\n")
    return folder


def test_attack_beats_random_on_planted_signal(tmp_path):
    """Sec. 4.2's claim on a task with a planted signal: the influence attack (↓I(z, w_y), k = 6
    edited training examples per query) lowers accuracy on the attacked queries more than random
    substitutions of the same training rows, over 3 seeds. Measured (torch 2.13 CPU): unedited
    100 %, attack 62.5 %, random 95.8 %, 16 edits per seed, with top_k = k + 2 = 8 (the attack rule is now
    2k + 3 = 15: more candidates per query, not re-measured)."""
    attack = _recipe("attack")
    config = write_config(tmp_path, data=str(write_cue_data(tmp_path / "cues")), num_queries=8, epochs=12,
                          seeds=[0, 1, 2], ks=[6], objectives=["attack_down"])
    results = attack.main(["--config", str(config), "--out", str(tmp_path / "attack")])

    def accuracy(objective, k):
        return sum(results[f"{objective}|k={k}|seed={s}"]["query_accuracy"] for s in (0, 1, 2)) / 3

    unedited, attacked, random_ = accuracy("unedited", 0), accuracy("attack_down", 6), accuracy("random:attack_down", 6)
    assert unedited == 1.0, "the planted cue was not learnt: the toy no longer tests the attack"
    assert attacked < random_ <= unedited, (attacked, random_, unedited)
    assert random_ - attacked >= 1 / 8, "the attack should flip at least one more query than random edits"
    # a training row is edited at most once, and the queries' top-8 responsible rows overlap: 16 edits
    assert all(results[f"attack_down|k=6|seed={s}"]["edits"] >= 16 for s in (0, 1, 2))
