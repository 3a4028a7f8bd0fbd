"""Shared pieces of the Pair-the-Dots recipes (``train.py``: fine-tune + explain; ``attack.py``:
Sec. 4.2 / Table 4; ``fix.py``: Sec. 4.3 / Figure 2).

- configs: ``recipes/configs/<name>.json`` (small CPU defaults) plus its ``paper_scale`` preset
  (BERT-base, full data) applied with ``--paper-scale``;
- data: a local folder relative to the repository root, else the Hub fallback;
- models: every retraining starts from the SAME initial weights (:func:`initial_model`);
- :class:`Results`: ``results.json`` keyed by setting (objective, k, seed); finished settings
  are skipped when a run is resumed;
- writers: Markdown table (Table 4 layout), matplotlib PNG plots (Agg), model cards rendered from
  ``model_cards/model_card.md.j2`` (attack, fix) or ``model_cards/train_card.md.j2`` (train).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

_SET_OFFLINE = "HF_HUB_OFFLINE" not in os.environ and not os.environ.get("PAIRDOTS_ONLINE")
if _SET_OFFLINE:  # CPU defaults are offline; --paper-scale lifts it (bert-base-uncased comes from the Hub)
    os.environ["HF_HUB_OFFLINE"] = "1"

from hf_pairdots.augment.goals import GOAL_GROUPS  # noqa: E402  (imports nothing from the Hub)
from hf_pairdots.io import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CARD_TEMPLATE = REPO / "model_cards" / "model_card.md.j2"
TINY = "tiny"

CONFIG_OPTIONS = ("params", "saliency_mode", "num_sampled", "max_candidates", "solver", "depth", "repeat", "damping",
                  "power_iters")
"""Config keys passed on to :class:`~hf_pairdots.arguments.ExplainArguments` (or its solver) when
set; the others keep the dataclasses' defaults."""

OBJECTIVE_TITLES = {name: group.title for name, group in GOAL_GROUPS.items()}
"""Objective -> its short title in tables, plots and cards (from the edit-goal table)."""


# --------------------------------------------------------------------------- config

def load_config(name_or_path: str, *, paper_scale: bool = False, overrides: dict | None = None) -> dict:
    """A config dict: ``recipes/configs/<name>.json`` (or a path), with its ``paper_scale``
    preset merged when asked, then ``overrides`` (non-None values only)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
    config = json.loads(path.read_text())
    preset = config.pop("paper_scale", {})
    if paper_scale:
        config.update(preset)
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config["config_name"] = path.stem
    config["paper_scale"] = paper_scale
    return config


def resolve_data(config: dict) -> str:
    """The local data folder (relative to the repository root) when present, else the Hub id."""
    local = config.get("data")
    if local:
        path = Path(local.split(":")[0])
        path = path if path.is_absolute() else (REPO / path)
        if path.exists():
            suffix = ":" + local.split(":", 1)[1] if ":" in local else ""
            return str(path.resolve()) + suffix
    if config.get("hub"):
        return config["hub"]
    raise FileNotFoundError(f"data {local!r} not found and no Hub fallback in the config")


def load_splits(config: dict):
    """``(train subsample, dev, test, label names, data spec)``; the train subsample is drawn with
    ``config['subsample_seed']`` so every setting (and its explanations) uses the same rows."""
    from hf_pairdots.data import load_text_classification, subsample

    spec = resolve_data(config)
    data = load_text_classification(spec)
    full_train = data["train"]
    dev = data["validation"] if "validation" in data else None
    if dev is None:  # e.g. IMDB / AG News: hold a dev set out of the training split, before subsampling
        shuffled = full_train.shuffle(seed=config.get("subsample_seed", 0) + 1)
        n_dev = config.get("dev_size") or 500
        dev, full_train = shuffled.select(range(n_dev)), shuffled.select(range(n_dev, len(shuffled)))
    train = full_train
    if config.get("train_size"):
        train = subsample(train, config["train_size"], config.get("subsample_seed", 0))
    test = data["test"] if "test" in data else data["validation"]
    for name, size_key in (("dev", "dev_size"), ("test", "test_size")):
        size = config.get(size_key)
        ds = dev if name == "dev" else test
        if size and len(ds) > size:
            ds = ds.shuffle(seed=0).select(range(size))
            if name == "dev":
                dev = ds
            else:
                test = ds
    names = data["train"].features["label"].names
    return train, dev, test, names, spec


# --------------------------------------------------------------------------- models

def load_tokenizer(config: dict):
    from hf_pairdots.models import load_tokenizer as _load

    return _load(None if config.get("model") in (None, TINY) else config["model"])


def initial_model(config: dict, label_names: list[str], tokenizer):
    """The starting weights every setting is trained from (deterministic: pretrained weights +
    a head initialised with ``config['init_seed']``; ``model: "tiny"`` = ``tiny_bert``)."""
    import torch

    from hf_pairdots.models import load_classifier, tiny_bert

    seed = config.get("init_seed", 0)
    if config.get("model") == TINY:
        model = tiny_bert(num_labels=len(label_names), vocab_size=len(tokenizer), seed=seed)
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {n: i for i, n in enumerate(label_names)}
        return model
    torch.manual_seed(seed)
    return load_classifier(config.get("model"), label_names=label_names)


def train_model(config: dict, train_ds, seed: int, *, label_names: list[str], tokenizer):
    """Fine-tune from the same starting weights (:func:`initial_model`) with
    :func:`hf_pairdots.training.train_classifier`."""
    from hf_pairdots.training import train_classifier

    return train_classifier(initial_model(config, label_names, tokenizer), tokenizer, train_ds,
                            epochs=config["epochs"], learning_rate=config["learning_rate"],
                            batch_size=config.get("batch_size", 16), max_length=config["max_length"], seed=seed,
                            show_progress=config.get("show_progress", False))


def evaluate_model(model, tokenizer, dataset, config: dict) -> float:
    from hf_pairdots.training import accuracy

    return accuracy(model, tokenizer, dataset, max_length=config["max_length"])


# --------------------------------------------------------------------------- results

def explain_with_edits(config: dict, model, tokenizer, train, queries, out: Path, *, selection: str, objective: str,
                       per_query: int):
    """Explain ``queries`` against ``train`` with the two-stage edit search of ``objective``,
    resumably under ``out``, and collect and apply up to ``per_query`` edits per query
    (:func:`hf_pairdots.pipeline.augment_training_set`; ``top_k`` from the config, else the
    pipeline's rule for ``per_query``). Returns its
    :class:`~hf_pairdots.pipeline.AugmentedTrainingSet`; other budgets k ≤ ``per_query`` come from
    :func:`hf_pairdots.pipeline.apply_explanations` of its ``explanations``."""
    from hf_pairdots.arguments import ExplainArguments
    from hf_pairdots.pipeline import augment_training_set

    options = {key: config[key] for key in CONFIG_OPTIONS if config.get(key) is not None}
    base = ExplainArguments.from_flat({**options, "queries": selection, "max_queries": config["num_queries"],
                                       "max_length": config["max_length"], "seed": config["seeds"][0]})
    made = augment_training_set(model, tokenizer, train, queries, out, objective=objective, per_query=per_query,
                                args=base, top_k=config.get("top_k"), show_progress=config.get("show_progress", False))
    print(f"[{made.args.edit}] explained {made.summary['queries']} queries in {made.summary['seconds']} s", flush=True)
    return made


def setting_key(objective: str, k: int, seed: int) -> str:
    return f"{objective}|k={k}|seed={seed}"


class Results:
    """``results.json``: ``{setting key: {"objective", "k", "seed", metrics..., "seconds"}}``,
    written atomically after every setting; a finished setting is skipped on rerun."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, objective: str, k: int, seed: int) -> bool:
        return setting_key(objective, k, seed) in self.data

    def get(self, objective: str, k: int, seed: int) -> dict:
        return self.data[setting_key(objective, k, seed)]

    def put(self, objective: str, k: int, seed: int, metrics: dict) -> None:
        self.data[setting_key(objective, k, seed)] = {**metrics, "objective": objective, "k": k, "seed": seed}
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def values(self, objective: str, k: int, metric: str) -> list[float]:
        return [r[metric] for r in self.data.values() if r["objective"] == objective and r["k"] == k and metric in r]


def mean_spread(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    ms = mean_spread(values)
    if ms is None:
        return "–"
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f} (n={len(values)})"


def write_table(results: Results, path: str | Path, *, methods: list[tuple[str, str]], ks: list[int], metric: str,
                baseline: tuple[str, int] | None, title: str) -> str:
    """Markdown table, Table 4 layout: a row per k ("# Examples"), a column per method
    (``(result objective, column title)``), mean ± std over seeds in percent; the unedited model
    (``baseline``: objective and k of its results) in its own first row."""
    lines = [f"### {title}", "", f"Metric: {metric}, mean ± std over seeds, in %.", "",
             "| # Examples | " + " | ".join(t for _, t in methods) + " |",
             "|---|" + "---|" * len(methods)]
    if baseline is not None:
        cell = fmt(results.values(baseline[0], baseline[1], metric))
        lines.append("| 0 (unedited) | " + " | ".join(cell for _ in methods) + " |")
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(fmt(results.values(obj, k, metric)) for obj, _ in methods) + " |")
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def plot_curves(results: Results, path: str | Path, *, curves: list[tuple[str, str]], ks: list[int], metric: str,
                unedited: tuple[str, int] | None, title: str, xlabel: str) -> Path:
    """PNG: ``metric`` vs k, one line per ``(objective, label)`` with the spread over seeds, and
    the unedited model as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for objective, label in curves:
        xs, ms, ss = [], [], []
        for k in ks:
            v = mean_spread(results.values(objective, k, metric))
            if v is not None:
                xs.append(k)
                ms.append(100 * v[0])
                ss.append(100 * v[1])
        if xs:
            line, = ax.plot(xs, ms, marker="o", label=label, linestyle="--" if "random" in objective else "-")
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                            color=line.get_color(), alpha=0.15)
    if unedited is not None:
        v = mean_spread(results.values(unedited[0], unedited[1], metric))
        if v is not None:
            ax.axhline(100 * v[0], color="gray", linestyle=":", label="unedited")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- model cards

def render_card(template: str | Path, **fields) -> str:
    """Markdown from a jinja2 template (a path, or a name in ``model_cards/``); every field is
    required (StrictUndefined); ``paper_bibtex`` defaults to the paper's BibTeX."""
    from jinja2 import Environment, StrictUndefined

    from hf_pairdots.hub import PAPER_BIBTEX

    path = Path(template)
    if not path.is_file():
        path = CARD_TEMPLATE.parent / str(template)
    fields.setdefault("paper_bibtex", PAPER_BIBTEX)
    env = Environment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(path.read_text(encoding="utf-8")).render(**fields)


def render_model_card(**fields) -> str:
    """Model card (Markdown) from ``model_cards/model_card.md.j2``; every field is required."""
    return render_card(CARD_TEMPLATE, **fields)


def base_model_name(config: dict) -> str:
    """How a card names the starting weights of ``config['model']``."""
    base = config.get("model") or "packaged MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2)"
    return "tiny_bert (random 2-layer BERT, tests only)" if base == TINY else base


def write_model_card(folder: Path, *, config: dict, data_spec: str, train_rows: int, objective: str, k: int,
                     seed: int, edits_description: str, num_edits: int, metrics: dict, recipe: str,
                     model=None, tokenizer=None, save_model: bool = False) -> Path:
    """``<folder>/README.md`` (the card with metrics); with ``save_model`` also the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    base = base_model_name(config)
    text = render_model_card(
        model_name=f"pairdots-{recipe}-{config['config_name']}-{objective}-k{k}-seed{seed}",
        base_model=base, data=data_spec, train_rows=train_rows, recipe=recipe, objective=objective,
        objective_title=OBJECTIVE_TITLES.get(objective.replace("random:", ""), objective), k=k, seed=seed,
        edits_description=edits_description, num_edits=num_edits,
        training={key: config.get(key) for key in ("epochs", "learning_rate", "batch_size", "max_length",
                                                   "train_size", "init_seed")},
        metrics=metrics, date=time.strftime("%Y-%m-%d"),
    )
    (folder / "README.md").write_text(text)
    if save_model and model is not None:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    return folder / "README.md"


@dataclass
class RecipeArguments:
    """The command line shared by attack.py and fix.py: the config and its overrides (``None``:
    the config's value)."""

    config: str = field(default="sst2", metadata={"help": "name in recipes/configs/ or a JSON path"})
    paper_scale: bool = field(default=False, metadata={"help": "apply the config's paper_scale preset"})
    out: str | None = field(default=None, metadata={"help": "output folder (None = runs/<recipe>-<config>)"})
    seeds: list[int] | None = field(default=None, metadata={"help": "training seeds (one setting each)"})
    ks: list[int] | None = field(default=None, metadata={"help": "edited training examples per query, k"})
    train_size: int | None = field(default=None, metadata={"help": "seeded training subsample (0 = all)"})
    num_queries: int | None = field(default=None, metadata={"help": "queries explained (max_queries)"})
    epochs: float | None = field(default=None, metadata={"help": "training epochs of every retraining"})
    model: str | None = field(default=None, metadata={"help": "Hub id, folder, or 'tiny'"})
    data: str | None = field(default=None, metadata={"help": "data folder/spec overriding the config"})
    save_models: bool = field(default=False, metadata={"help": "also save the weights of every retrained model"})


def run_recipe(doc: str, training_function, argv=None) -> dict:
    """Parse :class:`RecipeArguments` (description: the first paragraph of ``doc``), build the
    config and call ``training_function(config, args)``: the entry point of attack.py and fix.py."""
    from transformers import HfArgumentParser

    args = HfArgumentParser(RecipeArguments, description=doc.split("\n\n")[0]).parse_args(argv)
    return training_function(config_from_args(args), args)


def config_from_args(args) -> dict:
    if args.paper_scale and _SET_OFFLINE and "huggingface_hub" not in __import__("sys").modules:
        os.environ.pop("HF_HUB_OFFLINE", None)
    overrides = {"seeds": args.seeds, "ks": args.ks, "train_size": args.train_size, "num_queries": args.num_queries,
                 "epochs": args.epochs, "model": args.model, "data": args.data}
    return load_config(args.config, paper_scale=args.paper_scale, overrides=overrides)


def print_sizes(recipe: str, config: dict, train, dev, test, spec: str) -> None:
    print(f"[{recipe}] data {spec}: train subsample {len(train)}, dev {len(dev)}, test {len(test)}; "
          f"model {config.get('model') or 'packaged MiniLM-L6'}; epochs {config['epochs']}, lr {config['learning_rate']}, "
          f"max_length {config['max_length']}; queries {config['num_queries']}; ks {config['ks']}; "
          f"seeds {config['seeds']}; top_k {config.get('top_k')}; LiSSA depth {config.get('depth')}", flush=True)
