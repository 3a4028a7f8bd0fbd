"""Options dataclasses: by concern under one umbrella, ``help`` on every field, parsers built by
``transformers.HfArgumentParser`` from them (same defaults), JSON round trip, old flat files,
unknown keys refused by name."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from hf_pairdots.arguments import (EditArguments, ExplainArguments, MeasurementArguments, QueryArguments,
                                   SolverArguments, SolverOptions, options_dataclass)
from hf_pairdots.cli import build_parser, explain_arguments

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
GROUPS = (QueryArguments, MeasurementArguments, EditArguments)
ALL = (*GROUPS, SolverArguments, ExplainArguments)

CUSTOM = ExplainArguments(
    queries="indices", query_indices=[3, 1, 4], max_queries=None, labels=("gold",), top_k=3,
    params=["classifier.weight", "classifier.bias"], saliency_mode="grad_x_input", saliency_target="margin",
    salient_by="magnitude", eraser="mask", max_length=48, batch_size=8, output_subdir="runs/x", edit="attack",
    edit_top_k=2, num_sampled=3, max_candidates=7, seed=11, suspicious=4, suspicious_params="head",
    solver=SolverOptions(solver="lissa", damping=0.1, scale=50.0, depth=30, repeat=2, batch_size=16, seed=3,
                         keep_repeats=True, cache_dir="cache"))
"""What ``tests/fixtures/explain_args_custom.json`` (the flat layout of older files) holds."""


def test_solver_options_is_an_alias_of_solver_arguments():
    assert SolverOptions is SolverArguments


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    for f in dataclasses.fields(cls):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 10, f"{cls.__name__}.{f.name}"


def test_parsing_no_argv_gives_the_dataclass_defaults():
    parsed = HfArgumentParser(GROUPS).parse_args_into_dataclasses([], look_for_args_file=False)
    assert parsed == (QueryArguments(), MeasurementArguments(), EditArguments())
    assert HfArgumentParser(SolverArguments).parse_args_into_dataclasses([], look_for_args_file=False) == (
        SolverArguments(),)
    # the defaults themselves, written once in arguments.py
    assert (parsed[0].queries, parsed[0].max_queries, parsed[0].labels, parsed[0].top_k) == (
        "misclassified", 30, ["predicted", "gold"], 5)
    assert (parsed[1].params, parsed[1].max_length, parsed[1].suspicious_params) == ("auto", 128, "classifier")


def test_parsing_argv_sets_the_options():
    query, measurement, edits = HfArgumentParser(GROUPS).parse_args_into_dataclasses(
        ["--queries", "indices", "--query-indices", "3", "1", "--labels", "gold", "--params", "last:2",
         "--suspicious-params", "classifier.*", "pooler.*", "--edit", "fix", "--eraser", "zero", "--top-k", "2"],
        look_for_args_file=False)
    assert query == QueryArguments(queries="indices", query_indices=[3, 1], labels=["gold"], top_k=2)
    assert measurement.params == "last:2"  # one preset name parses to the string
    assert measurement.suspicious_params == ["classifier.*", "pooler.*"]  # patterns stay a list
    assert edits == EditArguments(edit="fix", eraser="zero")
    solver, = HfArgumentParser(SolverArguments).parse_args_into_dataclasses(
        ["--solver", "cg", "--damping", "0.5", "--no-lowrank-refine"], look_for_args_file=False)
    assert solver == SolverArguments(solver="cg", damping=0.5, lowrank_refine=False)
    with pytest.raises(SystemExit):  # the choice lists come from hf_pairdots.constants
        HfArgumentParser(GROUPS).parse_args_into_dataclasses(["--eraser", "blank"], look_for_args_file=False)


def test_pairdots_explain_defaults_are_the_dataclass_defaults():
    namespace = build_parser().parse_args(["explain", "model", "--data", "d", "--out", "o"])
    assert explain_arguments(namespace) == ExplainArguments()
    namespace = build_parser().parse_args(["explain", "model", "--data", "d", "--out", "o", "--max-queries", "3",
                                           "--params", "head", "--solver", "cg", "--depth", "7", "--seed", "5",
                                           "--suspicious", "4", "--batch-size", "8"])
    assert explain_arguments(namespace) == ExplainArguments(max_queries=3, params="head", seed=5, suspicious=4,
                                                            batch_size=8,
                                                            solver=SolverArguments(solver="cg", depth=7, seed=5))


def test_pairdots_augment_takes_the_dataclass_defaults():
    namespace = build_parser().parse_args(["augment", "model", "--data", "d", "--out", "o", "--objective", "fix"])
    args = explain_arguments(namespace, edit="fix")
    assert args == ExplainArguments(edit="fix")
    assert (namespace.num_sampled, namespace.max_candidates, namespace.depth) == (5, 20, 200)


def test_recipe_parser_keeps_only_its_own_defaults():
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import pair_the_dots
    finally:
        sys.path.remove(str(REPO / "recipes"))
    namespace, options = pair_the_dots.parse_args([])
    args = ExplainArguments.from_flat(options)
    assert args == ExplainArguments(max_queries=24, params="head", max_length=64)  # the recipe's three choices
    assert (namespace.train_size, namespace.fix_per_query, namespace.seed) == (2000, 2, 0)
    _, options = pair_the_dots.parse_args(["--seed", "3", "--solver", "lissa", "--depth", "20"])
    assert ExplainArguments.from_flat(options).solver == SolverArguments(solver="lissa", depth=20, seed=3)


def test_options_dataclass_copies_types_defaults_and_help():
    cls = options_dataclass("Some", ["top_k", "params", "depth"], defaults={"params": "head"})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert fields["top_k"].metadata["help"] == dataclasses.fields(QueryArguments)[4].metadata["help"]
    assert cls() == cls(top_k=5, params="head", depth=200)
    with pytest.raises(ValueError, match="'nope'"):
        options_dataclass("Bad", ["nope"])
    with pytest.raises(ValueError, match="depth"):
        options_dataclass("Bad", ["top_k"], defaults={"depth": 1})


@pytest.mark.parametrize("name, expected", [("default", ExplainArguments()), ("custom", CUSTOM)])
def test_old_flat_files_load_to_equal_objects(name, expected):
    """Files written before ``ranking`` and ``curvature`` existed load as what they were made with:
    raw ranking (the default is now unit), the Hessian."""
    loaded = ExplainArguments.from_json(FIXTURES / f"explain_args_{name}.json")
    assert loaded == dataclasses.replace(expected, ranking="raw")
    assert loaded.solver == expected.solver and loaded.labels == list(expected.labels)
    assert ExplainArguments().ranking == "unit" and loaded.solver.curvature == "hessian"


@pytest.mark.parametrize("name, args", [("default", ExplainArguments()), ("custom", CUSTOM)])
def test_round_trip_keeps_the_flat_layout(name, args, tmp_path):
    """The flat layout of older files (same keys and bytes), with the options added since."""
    text = args.to_json(tmp_path / "explain_args.json")
    old = json.loads((FIXTURES / f"explain_args_{name}.json").read_text())
    old["solver"]["curvature"] = args.solver.curvature
    added = {"ranking": args.ranking, "label_smoothing": args.label_smoothing, "class_weights": args.class_weights}
    assert text == json.dumps({**old, **added}, indent=2, sort_keys=True)
    assert ExplainArguments.from_json(tmp_path / "explain_args.json") == args
    for group in (args.query, args.measurement, args.edits, args.solver):
        assert type(group).from_json(group.to_json()) == group


def test_the_groups_nested_load_too():
    nested = {"query": CUSTOM.query.to_dict(), "measurement": CUSTOM.measurement.to_dict(),
              "edits": CUSTOM.edits.to_dict(), "solver": CUSTOM.solver.to_dict(), "output_subdir": "runs/x"}
    assert ExplainArguments.from_dict(nested) == CUSTOM
    assert ExplainArguments.from_dict({"query": {"top_k": 2}, "top_k": 3}).top_k == 3  # a name overrides its group


def test_unknown_keys_are_refused_with_their_names():
    flat = json.loads((FIXTURES / "explain_args_default.json").read_text())
    with pytest.raises(ValueError, match=r"ExplainArguments: unknown option\(s\) \['max_querys', 'topk'\]"):
        ExplainArguments.from_dict({**flat, "topk": 5, "max_querys": 1})
    with pytest.raises(ValueError, match=r"SolverArguments: unknown option\(s\) \['dampening'\]"):
        ExplainArguments.from_dict({**flat, "solver": {**flat["solver"], "dampening": 0.1}})
    nested = {"edits": {**EditArguments().to_dict(), "max_candidate": 3}}
    with pytest.raises(ValueError, match=r"EditArguments: unknown option\(s\) \['max_candidate'\]"):
        ExplainArguments.from_dict(nested)
    with pytest.raises(ValueError, match="expected a JSON object"):
        ExplainArguments.from_json("[1, 2]")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['topk'\]"):
        ExplainArguments(topk=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['nope'\]"):
        ExplainArguments.from_flat({"top_k": 3, "nope": 1})


def test_flat_keywords_groups_and_attributes_agree():
    flat = ExplainArguments(queries="all", top_k=3, params="all", edit="fix", seed=4)
    grouped = ExplainArguments(query=QueryArguments(queries="all", top_k=3),
                               measurement=MeasurementArguments(params="all"), edits=EditArguments(edit="fix", seed=4))
    assert flat == grouped
    assert (flat.queries, flat.top_k, flat.params, flat.edit, flat.seed) == ("all", 3, "all", "fix", 4)
    assert ExplainArguments(query=QueryArguments(top_k=9), top_k=2).top_k == 2  # names override the group
    assert dataclasses.replace(flat, max_queries=None).query == QueryArguments(queries="all", top_k=3,
                                                                               max_queries=None)
    flat.max_length = 32
    assert flat.measurement.max_length == 32
    with pytest.raises(ValueError, match="MeasurementArguments.max_length=0"):
        flat.max_length = 0  # assignment re-validates the group
    with pytest.raises(TypeError, match="expected a QueryArguments"):
        ExplainArguments(query=EditArguments())


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "QueryArguments.top_k=0"),
    ({"queries": "indices"}, "QueryArguments.query_indices"),
    ({"labels": ("gold", "other")}, "QueryArguments.labels"),
    ({"labels": "gold"}, "QueryArguments.labels"),
    ({"salient_by": "abs"}, "MeasurementArguments.salient_by='abs'"),
    ({"suspicious": True}, "MeasurementArguments.suspicious=True"),
    ({"eraser": "blank"}, "EditArguments.eraser='blank'"),
    ({"num_sampled": -1}, "EditArguments.num_sampled=-1"),
])
def test_checks_name_the_group_and_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ExplainArguments(**kwargs)


def test_a_single_preset_in_a_list_is_the_preset():
    assert MeasurementArguments(params=["head"]).params == "head"
    assert MeasurementArguments(params=["last:3"]).params == "last:3"
    assert MeasurementArguments(params=["classifier.*"]).params == ["classifier.*"]
    assert MeasurementArguments(params=("pooler.*", "classifier.*")).params == ["pooler.*", "classifier.*"]
