"""Sec. 4.2 / Table 4 of Meng et al. (2020): attack test predictions by editing training examples.

Train the base model once (seed = first seed), explain ``num_queries`` test examples with
``edit="attack"`` (gold row: ↓I(z, w_y); runner-up row: ↑I(z, w_y'); synonyms only); for each
objective (attack_down, attack_up, attack_combined) and k, replace k training examples per query
by their edits (``hf_pairdots.pipeline.apply_explanations``), retrain from the same starting weights, and
report accuracy on the queried test examples, next to the random-substitution baseline with the
same budget (``random_baseline``: the same training rows, random words and synonyms; for the
objectives in the config's ``random_baselines``, default all) and the unedited model, over
several seeds.

    python recipes/attack.py --config sst2
    accelerate launch recipes/attack.py --config sst2 --paper-scale

Outputs under ``--out``: ``explain/``, ``results.json`` (resumable), ``table4.md``,
``attack_accuracy.png``, ``cards/<setting>/README.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OBJECTIVES = ("attack_down", "attack_up", "attack_combined")


def get_dataloaders(config: dict):
    """Data of the experiment: train subsample, the queried test examples, label names, spec."""
    train, dev, test, names, spec = common.load_splits(config)
    queries = test.select(range(min(config["num_queries"], len(test))))
    return train, dev, queries, names, spec


def explain_queries(config: dict, model, tokenizer, train, queries, out: Path) -> list:
    """The typed explanation records of the attacked queries, with edits for both attack goals."""
    return common.explain_with_edits(config, model, tokenizer, train, queries, out, selection="all",
                                     objective="attack_combined", per_query=max(config["ks"])).explanations


def training_function(config: dict, args) -> dict:
    from hf_pairdots.augment.dataset import apply_edits, random_baseline
    from hf_pairdots.augment.lexicon import ensure_wordnet
    from hf_pairdots.pipeline import apply_explanations

    ensure_wordnet()
    out = Path(args.out or f"runs/attack-{config['config_name']}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, _dev, queries, names, spec = get_dataloaders(config)
    tokenizer = common.load_tokenizer(config)
    common.print_sizes("attack", config, train, _dev, queries, spec)
    results = common.Results(out / "results.json")
    objectives = config.get("objectives", list(OBJECTIVES))
    # the objectives that get a random-substitution control (config "random_baselines"; default all)
    controlled = [o for o in config.get("random_baselines", objectives) if o in objectives]
    ks, seeds = config["ks"], config["seeds"]

    def card(objective, k, seed, metrics, n_edits, how, model):
        common.write_model_card(out / "cards" / common.setting_key(objective, k, seed).replace("|", "_").replace(":", "-"),
                                config=config, data_spec=spec, train_rows=len(train), objective=objective, k=k,
                                seed=seed, edits_description=how, num_edits=n_edits, metrics=metrics,
                                recipe="attack", model=model, tokenizer=tokenizer, save_model=args.save_models)

    def run(objective, k, seed, rows, n_edits, how):
        if results.done(objective, k, seed):
            return
        t = time.perf_counter()
        model = common.train_model(config, rows, seed, label_names=names, tokenizer=tokenizer)
        metrics = {"query_accuracy": common.evaluate_model(model, tokenizer, queries, config), "edits": n_edits,
                   "train_rows": len(rows), "seconds": round(time.perf_counter() - t, 1)}
        results.put(objective, k, seed, metrics)
        card(objective, k, seed, metrics, n_edits, how, model)
        print(f"[attack] {common.setting_key(objective, k, seed)}: query accuracy "
              f"{metrics['query_accuracy']:.3f} ({n_edits} edits, {metrics['seconds']} s)", flush=True)

    def finished(o, k, s):
        return results.done(o, k, s) and (o not in controlled or results.done(f"random:{o}", k, s))

    todo = [(o, k, s) for s in seeds for o in objectives for k in ks if not finished(o, k, s)]
    if todo or not (out / "explain" / "explanations.jsonl").is_file():
        base = common.train_model(config, train, seeds[0], label_names=names, tokenizer=tokenizer)
        records = explain_queries(config, base, tokenizer, train, queries, out / "explain")
    else:
        records = []
    for seed in seeds:
        run("unedited", 0, seed, train, 0, "none: the training subsample as is")
        for objective in objectives:
            for k in ks:
                if finished(objective, k, seed):
                    continue
                collection, edited = apply_explanations(records, train, objective, per_query=k, seed=seeds[0])
                edits = collection.dataset
                run(objective, k, seed, edited, len(edits),
                    f"{objective}: up to {k} training examples per queried test example replaced by a one-word "
                    "WordNet synonym substitution chosen by influence on saliency (two-stage search, Eq. 9-12)")
                if objective not in controlled:
                    continue
                rnd = random_baseline(edits, train, seed=seed, max_candidates=config.get("max_candidates", 20),
                                      tokenizer=tokenizer, max_length=config["max_length"])
                run(f"random:{objective}", k, seed, apply_edits(train, rnd, mode="replace"), len(rnd),
                    f"random baseline for {objective}: the same training rows, one uniformly drawn synonym "
                    "substitution each")
    methods = [(o, common.OBJECTIVE_TITLES[o]) for o in objectives] + \
              [(f"random:{o}", f"random ({common.OBJECTIVE_TITLES[o]})") for o in controlled]
    table = common.write_table(results, out / "table4.md", methods=methods, ks=ks, metric="query_accuracy",
                               baseline=("unedited", 0),
                               title=f"Table 4 ({config['config_name']}): accuracy on {len(queries)} attacked test queries")
    common.plot_curves(results, out / "attack_accuracy.png", curves=methods, ks=ks, metric="query_accuracy",
                       unedited=("unedited", 0), title=f"Attack ({config['config_name']})",
                       xlabel="# edited training examples per query (k)")
    print(table)
    print(f"[attack] done in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return results.data


def main(argv=None) -> dict:
    return common.run_recipe(__doc__, training_function, argv)


if __name__ == "__main__":
    main()
