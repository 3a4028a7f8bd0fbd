"""End to end tests of recipes/train.py (fine-tune with PairDotsCallback, save, explain, card) on a
tiny BERT and a tiny synthetic SST-format data set (offline, seconds)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_recipes import write_data  # noqa: E402  (stsa.binary.{train,dev,test} with a planted cue)

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARD_FIELDS = ("## Base model", "## Data", "## Training", "## Metrics", "## Explanations",
               "## Intended use and limits", "## Citation", "meng2020pairthedots", "dev accuracy", "test accuracy",
               "% no citation known for")  # the synthetic data: the card asks for the source's citation


def write_config(tmp_path: Path, **extra) -> Path:
    """A tiny, deliberately undertrained setting (1 epoch, small steps): it leaves dev errors to explain."""
    data = write_data(tmp_path / "data", n_train=64, n_dev=16, n_test=16)
    config = {"data": str(data), "hub": None, "model": "tiny", "train_size": 48, "subsample_seed": 0, "init_seed": 0,
              "dev_size": 0, "test_size": 0, "num_queries": 2, "epochs": 1, "learning_rate": 5e-4, "batch_size": 16,
              "max_length": 16, "seeds": [3, 4], "params": "head", "depth": 20, "top_k": 2}
    config.update(extra)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def train():
    return importlib.import_module("train")


def run(train, config: Path, out: Path, *extra: str) -> dict:
    return train.main(["--config", str(config), "--out", str(out), "--no-progress", *extra])


def forbid_training(monkeypatch):
    from transformers import Trainer

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(Trainer, "train", fail)


def check_outputs(out: Path, results: dict, *, params: str) -> list[dict]:
    for name in ("results.json", "trained.json", "README.md", "pairdots/explanations.jsonl", "pairdots/report.html",
                 "pairdots/explain_args.json", "pairdots/meta.json", "pairdots/explanations/dataset_info.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == results
    assert results["train_rows"] == 48 and results["dev_rows"] == 16 and results["test_rows"] == 16
    assert results["setting"]["seed"] == 3 and results["global_step"] == 3  # ceil(48 / 16) steps, 1 epoch
    for split in ("dev", "test"):
        assert 0 <= results[f"{split}_accuracy"] <= 1
    assert results["history"] and "eval_accuracy" in results["history"][0]  # Trainer's per-epoch dev accuracy
    assert set(results["seconds"]) >= {"train", "explain", "evaluate"}
    explained = results["explanations"]
    assert explained["params"] == params and explained["queries"] >= 1
    assert json.loads((out / "pairdots" / "explain_args.json").read_text())["params"] == params
    records = [json.loads(line) for line in (out / "pairdots" / "explanations.jsonl").read_text().splitlines()]
    assert len(records) == explained["queries"] <= 2
    for record in records:
        assert record["predicted"] != record["gold"]  # dev misclassifications
        assert all(len(entry["top_train"]) == 2 for entry in record["labels"])
        assert "relative_residual" in json.dumps(record["diagnostics"])
    card = (out / "README.md").read_text()
    for field in CARD_FIELDS:
        assert field in card, field
    assert f"{results['dev_accuracy']:.4f}".rstrip("0") in card
    assert "{{" not in card and "{%" not in card
    return records


def test_train_end_to_end_and_resume(train, tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "full"
    results = run(train, config, out)
    printed = capsys.readouterr().out
    assert "train subsample 48, dev 16, test 16" in printed and "params 'head'" in printed
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()
    assert results["trainable_parameters"] == results["total_parameters"]
    records = check_outputs(out, results, params="head")
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "full fine-tuning" in card

    from hf_pairdots.models import load_classifier

    assert load_classifier(str(out)).config.num_labels == 2  # the saved model loads back

    forbid_training(monkeypatch)
    assert run(train, config, out) == results
    assert "not retrained" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other options.*seed"):
        run(train, config, out, "--seed", "5")

    # Stopped after saving the model, before the results: the model is reloaded, not retrained,
    # and the missing explanations are computed again, the same as before.
    (out / "results.json").unlink()
    (out / "pairdots" / "explanations.jsonl").unlink()
    again = run(train, config, out)
    assert "loading it, explaining what is left" in capsys.readouterr().out
    assert {k: again[k] for k in ("dev_accuracy", "test_accuracy", "train_loss", "global_step")} == \
        {k: results[k] for k in ("dev_accuracy", "test_accuracy", "train_loss", "global_step")}
    assert again["explanations"]["queries"] == results["explanations"]["queries"]
    redone = [json.loads(line) for line in (out / "pairdots" / "explanations.jsonl").read_text().splitlines()]
    assert [r["labels"][0]["top_train"][0]["train_index"] for r in redone] == \
        [r["labels"][0]["top_train"][0]["train_index"] for r in records]


def test_train_lora_explains_the_adapters(train, tmp_path, monkeypatch):
    config = write_config(tmp_path, power_iters=5)  # every HVP over the adapters runs the whole (tiny) encoder
    out = tmp_path / "lora"
    results = run(train, config, out, "--lora", "4")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"query", "value"}
    assert adapter["task_type"] == "SEQ_CLS"
    assert results["setting"]["learning_rate"] == pytest.approx(5e-3)  # 10 x the config's, for adapters
    assert results["trainable_parameters"] < results["total_parameters"] / 4
    check_outputs(out, results, params="lora")
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "LoRA (peft): rank 4" in card

    forbid_training(monkeypatch)  # a finished LoRA run: not retrained either
    assert run(train, config, out, "--lora", "4") == results


def test_default_out_and_learning_rates(train):
    args = train.parse_args(["--config", "sst2", "--lora", "8", "--seed", "2"])
    config = train.config_from_args(args)
    full_lr = json.loads((Path(train.__file__).parent / "configs" / "sst2.json").read_text())["learning_rate"]
    assert config["params"] == "lora" and config["learning_rate"] == pytest.approx(10 * full_lr)  # adapters
    assert config["seeds"] == [2] and config["lora_targets"] == ["query", "value"]
    assert train.default_out(config) == Path("runs/train-sst2-lora8")
    config = train.config_from_args(train.parse_args(["--config", "sst2", "--paper-scale"]))
    assert config["params"] == "head" and config["learning_rate"] == pytest.approx(2e-5) and config["lora"] is None
    assert train.default_out(config) == Path("runs/train-sst2-paper")
