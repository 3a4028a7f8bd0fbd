"""Sec. 4.3 / Figure 2 of Meng et al. (2020): fix a model by adding edited training examples.

Train the base model once (seed = first seed), explain up to ``num_queries`` dev
misclassifications with ``edit="fix"`` (gold row: ↑I(z, w_y); wrong-label row: ↓I(z, w_y');
synonyms and antonyms); for k in 0..K add k fixing examples per explained dev error
(``hf_pairdots.pipeline.apply_explanations(..., "fix")``: rows are added), retrain from the same starting
weights and report dev and test accuracy, next to the random baseline with the same number of
added examples, over several seeds; plot the Figure-2 curves for dev and test.

    python recipes/fix.py --config sst2
    accelerate launch recipes/fix.py --config sst2 --paper-scale

Outputs under ``--out``: ``explain/``, ``results.json`` (resumable), ``figure2.md``,
``figure2_dev.png``, ``figure2_test.png``, ``cards/<setting>/README.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def get_dataloaders(config: dict):
    """Train subsample, dev (queries and Figure 2's dev curve), test, label names, spec."""
    return common.load_splits(config)


def explain_errors(config: dict, model, tokenizer, train, dev, out: Path) -> list:
    """The typed explanation records of the dev misclassifications, with fixing edits."""
    return common.explain_with_edits(config, model, tokenizer, train, dev, out, selection="misclassified",
                                     objective="fix", per_query=max(config["ks"])).explanations


def training_function(config: dict, args) -> dict:
    from hf_pairdots.augment.dataset import apply_edits, random_baseline
    from hf_pairdots.augment.lexicon import ensure_wordnet
    from hf_pairdots.pipeline import apply_explanations

    ensure_wordnet()
    out = Path(args.out or f"runs/fix-{config['config_name']}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, dev, test, names, spec = get_dataloaders(config)
    tokenizer = common.load_tokenizer(config)
    results = common.Results(out / "results.json")
    ks = sorted(k for k in (args.ks or config.get("fix_ks") or config["ks"]) if k > 0)
    config["ks"] = ks
    common.print_sizes("fix", config, train, dev, test, spec)
    seeds = config["seeds"]

    def run(objective, k, seed, rows, n_edits, how):
        if results.done(objective, k, seed):
            return
        t = time.perf_counter()
        model = common.train_model(config, rows, seed, label_names=names, tokenizer=tokenizer)
        metrics = {"dev_accuracy": common.evaluate_model(model, tokenizer, dev, config),
                   "test_accuracy": common.evaluate_model(model, tokenizer, test, config),
                   "edits": n_edits, "train_rows": len(rows), "seconds": round(time.perf_counter() - t, 1)}
        results.put(objective, k, seed, metrics)
        common.write_model_card(out / "cards" / common.setting_key(objective, k, seed).replace("|", "_").replace(":", "-"),
                                config=config, data_spec=spec, train_rows=len(rows), objective=objective, k=k,
                                seed=seed, edits_description=how, num_edits=n_edits, metrics=metrics, recipe="fix",
                                model=model, tokenizer=tokenizer, save_model=args.save_models)
        print(f"[fix] {common.setting_key(objective, k, seed)}: dev {metrics['dev_accuracy']:.3f} "
              f"test {metrics['test_accuracy']:.3f} (+{n_edits} rows, {metrics['seconds']} s)", flush=True)

    todo = [(k, s) for s in seeds for k in ks if not (results.done("fix", k, s) and results.done("random:fix", k, s))]
    records = []
    if todo:
        base = common.train_model(config, train, seeds[0], label_names=names, tokenizer=tokenizer)
        records = explain_errors(config, base, tokenizer, train, dev, out / "explain")
    for seed in seeds:
        run("unedited", 0, seed, train, 0, "none: the training subsample as is (k = 0)")
        for k in ks:
            if results.done("fix", k, seed) and results.done("random:fix", k, seed):
                continue
            collection, edited = apply_explanations(records, train, "fix", per_query=k, seed=seeds[0])
            edits = collection.dataset
            run("fix", k, seed, edited, len(edits),
                f"fix: up to {k} edited copies of the training examples most responsible for each explained dev "
                "misclassification added (one WordNet synonym/antonym substitution each, chosen by influence on "
                "saliency: ↑I(z, w_y) / ↓I(z, w_y'), Eq. 9-12); the edited examples keep their training labels")
            rnd = random_baseline(edits, train, seed=seed, max_candidates=config.get("max_candidates", 20),
                                  tokenizer=tokenizer, max_length=config["max_length"])
            run("random:fix", k, seed, apply_edits(train, rnd, mode="add"), len(rnd),
                "random baseline: the same number of added rows, the same source examples, one uniformly drawn "
                "WordNet substitution each")
    all_ks = [0] + ks
    for name in ("fix", "random:fix"):  # k = 0 is the unedited model on both curves
        for seed in seeds:
            if results.done("unedited", 0, seed) and not results.done(name, 0, seed):
                results.put(name, 0, seed, {**results.get("unedited", 0, seed), "edits": 0})
    methods = [("fix", "fix"), ("random:fix", "random")]
    text = ""
    for metric in ("dev_accuracy", "test_accuracy"):
        text += common.write_table(results, out / f"figure2_{metric.split('_')[0]}.md", methods=methods, ks=ks,
                                   metric=metric, baseline=("unedited", 0),
                                   title=f"Figure 2 ({config['config_name']}): {metric}") + "\n"
        common.plot_curves(results, out / f"figure2_{metric.split('_')[0]}.png", curves=methods, ks=all_ks,
                           metric=metric, unedited=("unedited", 0),
                           title=f"Fixing ({config['config_name']}): {metric.split('_')[0]}",
                           xlabel="# fixing examples added per dev error (k)")
    (out / "figure2.md").write_text(text)
    print(text)
    print(f"[fix] done in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return results.data


def main(argv=None) -> dict:
    return common.run_recipe(__doc__, training_function, argv)


if __name__ == "__main__":
    main()
