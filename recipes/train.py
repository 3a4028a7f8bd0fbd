"""Fine-tune a sequence classifier with ``PairDotsCallback`` attached; save the model, its
explanations and a model card.

A ``transformers.Trainer`` fine-tunes the config's model (all weights, or peft LoRA adapters on
the attention's query and value projections with ``--lora R``) on the config's seeded training
subsample. When training ends the model is saved, then ``PairDotsCallback`` explains up to
``num_queries`` dev misclassifications (saliency for the wrong and the gold label, the top-k
training examples by influence on the most salient word's saliency, Eq. 5, with LiSSA, and
their responsible words, Eq. 8), over the config's parameter subset, or over the LoRA adapters
(``params="lora"``) with ``--lora``. Dev and test accuracy come from the repository's offline
``evaluate`` metric (:func:`hf_pairdots.training.accuracy`).

    python recipes/train.py --config sst2
    python recipes/train.py --config sst2 --lora 8
    python recipes/train.py --config imdb --train-size 1000 --epochs 3 --seed 1
    python recipes/train.py --config sst2 --model bert-base-uncased --data glue/sst2   # needs a network
    accelerate launch recipes/train.py --config sst2 --paper-scale

``--config sst2`` fine-tunes MiniLM-L6 on 500 SST-2 sentences x 2 epochs and explains up to 10
dev errors over the head (top-5, LiSSA depth 50); its time and accuracy on a CPU are in
``benchmarks/RESULTS.md`` ("Costs quoted by the documentation"). A few hundred optimizer steps at
the config's learning rate leave MiniLM undertrained: more rows, epochs or ``--learning-rate`` help.

Outputs under ``--out`` (default ``runs/train-<config>[-lora<R>][-paper]``):

- the model: ``config.json``, ``model.safetensors`` and the tokenizer (``Trainer.save_model``);
  with ``--lora`` the adapter instead: ``adapter_config.json``, ``adapter_model.safetensors``;
- ``pairdots/``: ``explanations.jsonl``, ``explanations/`` (a ``datasets.Dataset``),
  ``report.html``, ``explain_args.json``, ``meta.json``;
- ``results.json``: dev/test accuracy, the explanation summary, sizes and seconds per stage;
- ``README.md``: the model card (``model_cards/train_card.md.j2``).

Resumable: a finished run (``results.json`` and the saved model) is returned as is, without
retraining. When the model was saved but the run stopped later (while explaining, say), the
saved model is loaded and only the unfinished explanations are computed. A rerun with other
options into the same folder is refused (use another ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

RESULTS_NAME = "results.json"
TRAINED_NAME = "trained.json"
"""Written right after the model is saved: the run's setting and the training statistics."""
CARD_TEMPLATE = "train_card.md.j2"
LORA_TARGETS = ("query", "value")
LORA_LR_FACTOR = 10
"""With ``--lora`` and no ``--learning-rate``: the config's ``lora_learning_rate``, else this
many times its ``learning_rate`` (adapters start at zero and need larger steps)."""
SOLVER_KEYS = ("solver", "depth", "repeat", "damping", "power_iters")
"""Config keys passed on to :class:`~hf_pairdots.arguments.SolverArguments` when set."""
WARMUP = 0.06
WEIGHT_DECAY = 0.01


# --------------------------------------------------------------------------- options

@dataclass
class TrainArguments:
    """The command line of this recipe: the config, its overrides (``None``: the config's value)
    and the LoRA and Trainer settings."""

    config: str = field(default="sst2", metadata={"help": "name in recipes/configs/ or a JSON path"})
    paper_scale: bool = field(default=False, metadata={"help": "apply the config's paper_scale preset"})
    model: str | None = field(default=None, metadata={"help": "Hub id, folder, or 'tiny' (None = the config's)"})
    data: str | None = field(default=None,
                             metadata={"help": "dataset spec overriding the config (see hf_pairdots.data)"})
    lora: int | None = field(default=None, metadata={
        "metavar": "R", "help": "train LoRA adapters of rank R (peft, task SEQ_CLS) instead of all weights; "
                                "influence is then taken over the adapters"})
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                                    metadata={"help": "module names LoRA adapts (query value: BERT/RoBERTa)"})
    epochs: float | None = field(default=None, metadata={"help": "training epochs (None = the config's)"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate (None = the config's; with --lora its lora_learning_rate, else "
                f"{LORA_LR_FACTOR} x its learning_rate)"})
    train_size: int | None = field(default=None, metadata={"help": "seeded training subsample (0 = all)"})
    num_queries: int | None = field(default=None, metadata={"help": "dev misclassifications to explain"})
    top_k: int | None = field(default=None, metadata={
        "help": "training examples kept per explained label (None = the config's, else QueryArguments.top_k)"})
    params: str | None = field(default=None, metadata={
        "help": "parameter subset for influence (None = 'lora' with --lora, else the config's)"})
    seed: int | None = field(default=None, metadata={"help": "training seed (None = the config's first seed)"})
    out: str | None = field(default=None, metadata={"help": "output folder (None = runs/train-<config>[-lora<R>])"})
    report_to: list[str] = field(default_factory=list, metadata={"help": "Trainer integrations (default: none)"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})


def parse_args(argv=None) -> argparse.Namespace:
    """:class:`TrainArguments` parsed by ``transformers.HfArgumentParser``, as a namespace."""
    from transformers import HfArgumentParser

    return HfArgumentParser(TrainArguments, description=__doc__.split("\n\n")[0]).parse_args(argv)


def config_from_args(args) -> dict:
    """The config with the command line's overrides (through :func:`common.config_from_args`)."""
    from hf_pairdots.arguments import QueryArguments

    shared = argparse.Namespace(**vars(args), seeds=None if args.seed is None else [args.seed], ks=None)
    config = common.config_from_args(shared)
    lora_lr = config.get("lora_learning_rate") or LORA_LR_FACTOR * config["learning_rate"]
    config["learning_rate"] = args.learning_rate or (lora_lr if args.lora else config["learning_rate"])
    config["top_k"] = args.top_k or config.get("top_k") or QueryArguments.top_k
    config["params"] = args.params or ("lora" if args.lora else config.get("params", "head"))
    config["lora"] = args.lora
    config["lora_targets"] = list(args.lora_targets) if args.lora else None
    return config


def default_out(config: dict) -> Path:
    name = f"runs/train-{config['config_name']}"
    name += f"-lora{config['lora']}" if config["lora"] else ""
    return Path(name + ("-paper" if config["paper_scale"] else ""))


def run_setting(config: dict, spec: str) -> dict:
    """What makes a run: a finished run with another setting is not mistaken for this one."""
    keys = ("model", "train_size", "subsample_seed", "init_seed", "dev_size", "test_size", "epochs", "learning_rate",
            "batch_size", "max_length", "lora", "lora_targets", "params", "num_queries", "top_k", *SOLVER_KEYS)
    return {"data": spec, "seed": config["seeds"][0], **{key: config.get(key) for key in keys}}


def check_setting(out: Path, setting: dict) -> None:
    for name in (TRAINED_NAME, RESULTS_NAME):
        path = out / name
        if path.is_file():
            old = json.loads(path.read_text()).get("setting")
            if old != setting:
                changed = sorted(k for k in set(old or {}) | set(setting) if (old or {}).get(k) != setting.get(k))
                raise ValueError(f"{path} is from a run with other options ({', '.join(changed)} differ); "
                                 f"pass another --out, or delete {out} to redo the run")


def explain_arguments(config: dict):
    from hf_pairdots.arguments import ExplainArguments

    solver = {key: config[key] for key in SOLVER_KEYS if config.get(key) is not None}
    return ExplainArguments.from_flat({**solver, "queries": "misclassified", "max_queries": config["num_queries"],
                                       "top_k": config["top_k"], "params": config["params"],
                                       "max_length": config["max_length"], "seed": config["seeds"][0]})


# --------------------------------------------------------------------------- models

def lora_config(config: dict):
    from peft import LoraConfig

    r = config["lora"]
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=config["lora_targets"],
                      task_type="SEQ_CLS")


def starting_model(config: dict, label_names: list[str], tokenizer):
    """:func:`common.initial_model`, wrapped by peft when ``config['lora']`` (LoRA's A matrices
    drawn with ``init_seed`` too, so every run of a config starts from the same weights)."""
    import torch

    model = common.initial_model(config, label_names, tokenizer)
    if not config["lora"]:
        return model
    from peft import get_peft_model

    torch.manual_seed(config.get("init_seed", 0))
    return get_peft_model(model, lora_config(config))


def model_saved(out: Path, config: dict) -> bool:
    """True when training finished and the model (LoRA: the adapter) was saved into ``out``."""
    weights = "adapter_config.json" if config["lora"] else "config.json"
    return (out / TRAINED_NAME).is_file() and (out / weights).is_file()


def load_trained(out: Path, config: dict, label_names: list[str], tokenizer):
    """The model saved by an earlier run into ``out`` (eval mode)."""
    if config["lora"]:
        from peft import PeftModel

        base = common.initial_model(config, label_names, tokenizer)
        return PeftModel.from_pretrained(base, str(out), is_trainable=True).eval()  # trainable: "lora" selects them
    from hf_pairdots.models import load_classifier

    return load_classifier(str(out))


def parameter_counts(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _write_json(path: Path, data: dict) -> None:
    from hf_pairdots.report import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------- training

def build_trainer(config: dict, model, tokenizer, train, dev, out: Path, args, setting: dict):
    """The Trainer, with a callback that saves the model as soon as training ends and, after it,
    :class:`~hf_pairdots.callback.PairDotsCallback` (callbacks run in the order added)."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from hf_pairdots.callback import PairDotsCallback
    from hf_pairdots.metrics import load_accuracy
    from hf_pairdots.training import tokenize_dataset

    metric = load_accuracy()

    def compute_metrics(prediction):
        return metric.compute(predictions=np.argmax(prediction.predictions, axis=-1).tolist(),
                              references=prediction.label_ids.tolist())

    class SaveWhenTrained(TrainerCallback):
        """Save the model (LoRA: the adapter) and the tokenizer, then ``trained.json``, before the
        explanation starts: a run stopped while explaining resumes without retraining."""

        def on_train_end(self, train_args, state, control, **kwargs):
            trainer.save_model()
            if state.is_world_process_zero:
                logged = {k: v for entry in state.log_history for k, v in entry.items()}
                _write_json(out / TRAINED_NAME, {"setting": setting, "global_step": state.global_step,
                                                 "train_loss": logged.get("train_loss"),
                                                 "train_seconds": logged.get("train_runtime"),
                                                 "history": [e for e in state.log_history if "eval_accuracy" in e]})
            return control

    seed = config["seeds"][0]
    batch_size = config.get("batch_size", 16)
    train_args = TrainingArguments(
        output_dir=str(out), num_train_epochs=config["epochs"], learning_rate=config["learning_rate"],
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=2 * batch_size, warmup_steps=WARMUP,
        weight_decay=WEIGHT_DECAY, seed=seed, data_seed=seed, use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch", logging_strategy="epoch", save_strategy="no", report_to=list(args.report_to),
        disable_tqdm=args.no_progress)
    callback = PairDotsCallback(dev, train_dataset=train, tokenizer=tokenizer, args=explain_arguments(config))
    trainer = Trainer(model=model, args=train_args, data_collator=DataCollatorWithPadding(tokenizer),
                      train_dataset=tokenize_dataset(train, tokenizer, config["max_length"]),
                      eval_dataset=tokenize_dataset(dev, tokenizer, config["max_length"]),
                      processing_class=tokenizer, compute_metrics=compute_metrics,
                      callbacks=[SaveWhenTrained(), callback])
    return trainer, callback


def say(message: str) -> None:
    """Print on the first process only (``RANK`` is set by ``accelerate launch`` / ``torchrun``)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def print_sizes(config: dict, train, dev, test, spec: str) -> None:
    method = f"LoRA r={config['lora']} on {'/'.join(config['lora_targets'])}" if config["lora"] else "all weights"
    say(f"[train] data {spec}: train subsample {len(train)}, dev {len(dev)}, test {len(test)}; "
          f"model {config.get('model') or 'packaged MiniLM-L6'} ({method}); epochs {config['epochs']}, "
          f"lr {config['learning_rate']}, batch {config.get('batch_size', 16)}, max_length {config['max_length']}, "
          f"seed {config['seeds'][0]}; explain up to {config['num_queries']} dev errors, top_k {config['top_k']}, "
          f"params {config['params']!r}, solver {config.get('solver', 'auto')}, LiSSA depth {config.get('depth', 200)}")


def training_function(config: dict, args) -> dict:
    """Train (unless already trained), explain, evaluate, write results and the card; returns
    the results (``{}`` on processes other than the main one)."""
    out = Path(args.out) if args.out else default_out(config)
    results_path, trained_path = out / RESULTS_NAME, out / TRAINED_NAME
    start = time.perf_counter()
    train, dev, test, names, spec = common.load_splits(config)
    setting = run_setting(config, spec)
    check_setting(out, setting)
    if results_path.is_file() and model_saved(out, config):
        results = json.loads(results_path.read_text())
        say(f"[train] finished run in {out} (dev accuracy {results['dev_accuracy']:.4f}, test accuracy "
            f"{results['test_accuracy']:.4f}): not retrained; delete {results_path} to redo it")
        return results
    tokenizer = common.load_tokenizer(config)
    print_sizes(config, train, dev, test, spec)

    from hf_pairdots.distributed import is_main_process

    if model_saved(out, config):
        from accelerate import PartialState

        from hf_pairdots.pipeline import explain_dataset

        PartialState()  # joins the process group under `accelerate launch`: every rank explains its shard
        say(f"[train] model already trained and saved in {out}: loading it, explaining what is left")
        model = load_trained(out, config, names, tokenizer)
        trained = json.loads(trained_path.read_text())
        summary = explain_dataset(model, tokenizer, train, dev, explain_arguments(config), out / "pairdots",
                                  show_progress=not args.no_progress, meta={"global_step": trained["global_step"]})
    else:
        model = starting_model(config, names, tokenizer)
        trainer, callback = build_trainer(config, model, tokenizer, train, dev, out, args, setting)
        trainer.train()
        model = trainer.model
        summary = callback.last_summary
        trained = json.loads(trained_path.read_text()) if is_main_process() else {}
    if not is_main_process():
        return {}
    print(f"[train] trained {trained['train_seconds']} s; explained {summary['queries']} dev errors in "
          f"{summary['seconds']} s -> {out / 'pairdots' / 'report.html'}", flush=True)

    t = time.perf_counter()
    model.eval()
    dev_accuracy = common.evaluate_model(model, tokenizer, dev, config)
    test_accuracy = common.evaluate_model(model, tokenizer, test, config)
    trainable, total = parameter_counts(model)
    results = {
        "setting": setting, "config": config["config_name"], "paper_scale": config["paper_scale"],
        "base_model": common.base_model_name(config), "data": spec, "labels": names,
        "train_rows": len(train), "dev_rows": len(dev), "test_rows": len(test),
        "dev_accuracy": dev_accuracy, "test_accuracy": test_accuracy,
        "train_loss": trained["train_loss"], "global_step": trained["global_step"], "history": trained["history"],
        "trainable_parameters": trainable, "total_parameters": total,
        "explanations": {**summary, "params": config["params"], "top_k": config["top_k"],
                         "solver": config.get("solver", "auto"), "depth": config.get("depth", 200), "folder": "pairdots"},
        "seconds": {"train": trained["train_seconds"], "explain": summary["seconds"],
                    "evaluate": round(time.perf_counter() - t, 1)},
    }
    write_card(out, config, results, args.command)
    results["seconds"]["total (this call)"] = round(time.perf_counter() - start, 1)
    _write_json(results_path, results)
    print(f"[train] dev accuracy {dev_accuracy:.4f}, test accuracy {test_accuracy:.4f}; "
          f"{results['seconds']['total (this call)']} s in all -> {out}", flush=True)
    return json.loads(results_path.read_text())


def write_card(out: Path, config: dict, results: dict, command: str) -> Path:
    """``<out>/README.md`` from ``model_cards/train_card.md.j2``."""
    from hf_pairdots.hub import source_info

    source = source_info(results["data"])
    lora = config["lora"]
    method = (f"LoRA (peft): rank {lora}, alpha {2 * lora}, dropout 0.1, on {', '.join(config['lora_targets'])}; "
              "the classifier head trained as well (peft's modules_to_save)" if lora else "full fine-tuning")
    name = f"pairdots-train-{config['config_name']}" + (f"-lora{lora}" if lora else "") + f"-seed{config['seeds'][0]}"
    training = {key: config.get(key) for key in ("epochs", "learning_rate", "batch_size", "max_length", "train_size")}
    training |= {"seed": config["seeds"][0], "warmup (share of steps)": WARMUP, "weight decay": WEIGHT_DECAY,
                 "optimizer steps": results["global_step"], "final training loss": _significant(results["train_loss"]),
                 "command": f"`{command}`"}
    explanations = results["explanations"]
    text = common.render_card(
        CARD_TEMPLATE, model_name=name, library_name="peft" if lora else "transformers", lora=bool(lora),
        base_model=results["base_model"], init_seed=config.get("init_seed", 0), label_names=results["labels"],
        data=results["data"], data_name=source["name"] if source["keys"] else "source not recognised",
        data_bibtex=source["bibtex"],
        train_rows=results["train_rows"], dev_rows=results["dev_rows"], test_rows=results["test_rows"],
        method=method, trainable_parameters=f"{results['trainable_parameters']:,}",
        total_parameters=f"{results['total_parameters']:,}", training=training,
        metrics={"dev accuracy": _round(results["dev_accuracy"]), "test accuracy": _round(results["test_accuracy"])},
        explanations={"params": explanations["params"], "dev errors explained": explanations["queries"],
                      "top_k": explanations["top_k"], "solver": explanations["solver"],
                      "LiSSA depth": explanations["depth"],
                      "mean top-1 influence": _significant(explanations["mean_top1_influence"]),
                      "seconds": explanations["seconds"]},
        date=time.strftime("%Y-%m-%d"))
    (out / "README.md").write_text(text)
    return out / "README.md"


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _significant(value, digits: int = 4):
    return None if value is None else f"{float(value):.{digits}g}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.command = shlex.join(["python", "recipes/train.py", *(sys.argv[1:] if argv is None else argv)])
    return training_function(config_from_args(args), args)


if __name__ == "__main__":
    main()
