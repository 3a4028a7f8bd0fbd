"""Model layout (:class:`hf_pairdots.modeling.ModelLayout`) and the module boundaries of the package.

The layout is the one place that knows where a classifier's parts are. On a tiny BERT, a peft
LoRA BERT and DDP/accelerate-like wrappers (unwrapped first, as ``influence_mode`` does) it finds
the modules that the probing it replaced found (``autograd``'s presets, ``features``'
``TopHead``, saliency's embedding block, the cache's model config): the expected modules below
are written out attribute by attribute. Also here: the old names stay aliases of the moved
objects, the loss keeps its old name in cache keys, ``PreparedData.shard`` splits the data by
rank, and no module of the package imports a private name of another (parsed with ``ast``).
"""

import ast
import pathlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import hf_pairdots
from hf_pairdots import explain, features, influence, loss, measurement, modeling, saliency, solve, text
from hf_pairdots.autograd import select_parameters
from hf_pairdots.cache import fingerprint_model
from hf_pairdots.distributed import reassemble
from hf_pairdots.errors import SaliencyError
from hf_pairdots.features import TopHead, supports_top_head
from hf_pairdots.influence import train_influence
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, TrainLoss, make_train_loss, prepare_data
from hf_pairdots.modeling import PEFT_PREFIX, ModelLayout, find_embedding_block, unwrap_model
from hf_pairdots.models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bert(seed=0):
    return tiny_bert(hidden_size=16, intermediate_size=32, num_hidden_layers=2, seed=seed)


def lora(task_type="SEQ_CLS"):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type=task_type)
    return get_peft_model(bert(), config)


class Wrapper(nn.Module):
    """What DDP, DataParallel and accelerate put around a model: the model as ``.module``."""

    def __init__(self, model):
        super().__init__()
        self.module = model


def parts(layout):
    return (layout.inner, layout.base, layout.layers, layout.pooler, layout.classifier, layout.embedding_block())


# ---------------------------------------------------------------------------------- layouts


def test_layout_of_a_bert_classifier():
    model = bert()
    layout = ModelLayout.of(model)
    assert layout.model is model and layout.peft_prefix == "" and layout.base_prefix == "bert"
    assert parts(layout) == (model, model.bert, model.bert.encoder.layer, model.bert.pooler, model.classifier,
                             model.bert.embeddings)
    assert layout.last_layer is model.bert.encoder.layer[1] and layout.has_top_head
    assert find_embedding_block(model) is model.bert.embeddings
    assert find_embedding_block(model, "bert.embeddings.word_embeddings") is model.bert.embeddings.word_embeddings
    assert TopHead(model, "ffn").parameter_names() == {
        n for n, _ in model.named_parameters()
        if n.startswith(("bert.encoder.layer.1.intermediate.", "bert.encoder.layer.1.output.", "bert.pooler.",
                         "classifier."))}


@pytest.mark.parametrize("task_type", ["SEQ_CLS", None])
def test_layout_of_a_peft_lora_bert(task_type):
    """peft's parts are those of the wrapped model, with peft's prefix on every name. With
    ``task_type="SEQ_CLS"`` peft puts the classifier in a ``modules_to_save`` wrapper, which is
    not an ``nn.Linear``: no cached top (as before); without, the top is cached."""
    model = lora(task_type)
    inner = model.get_base_model()
    layout = ModelLayout.of(model)
    assert layout.model is model and layout.peft_prefix == PEFT_PREFIX == "base_model.model."
    assert parts(layout) == (inner, inner.bert, inner.bert.encoder.layer, inner.bert.pooler, inner.classifier,
                             inner.bert.embeddings)
    assert layout.has_top_head is (task_type is None) and supports_top_head(model) is (task_type is None)
    assert all(n.startswith(PEFT_PREFIX) for n in select_parameters(model, "lora").names)
    last = select_parameters(model, "last:1") if task_type is None else None
    if last is not None:  # the last layer's adapters: the names the presets build from the layout
        assert set(last.names) == {f"base_model.model.bert.encoder.layer.1.attention.self.{m}.lora_{ab}.default.weight"
                                   for m in ("query", "value") for ab in "AB"}
    if task_type == "SEQ_CLS":
        assert set(select_parameters(model, "classifier").names) == {
            "base_model.model.classifier.modules_to_save.default.weight",
            "base_model.model.classifier.modules_to_save.default.bias"}


def test_layout_behind_ddp_like_wrappers_is_found_after_unwrapping():
    """``unwrap_model`` strips the wrappers and the layout finds the very modules of the bare
    model; the wrapper itself is not looked through (as before: no base model, no top, the
    first ``nn.Embedding`` as the embedding block)."""
    model = bert()
    wrapped = Wrapper(Wrapper(model))
    assert parts(ModelLayout.of(unwrap_model(wrapped))) == parts(ModelLayout.of(model))
    peft_model = lora()
    assert parts(ModelLayout.of(unwrap_model(Wrapper(peft_model)))) == parts(ModelLayout.of(peft_model))
    outer = ModelLayout.of(wrapped)
    assert (outer.inner, outer.base, outer.layers, outer.pooler, outer.classifier) == (wrapped, None, None, None,
                                                                                      None)
    assert not outer.has_top_head and outer.embedding_block() is model.bert.embeddings.word_embeddings


def test_layout_of_a_base_model_and_of_a_model_without_embeddings():
    """A bare ``BertModel`` (``base_model_prefix`` names no attribute of its own): its own
    ``embeddings``, no encoder layers for the presets, no top; a model without any embedding
    raises the SaliencyError naming ``module_name``."""
    base = bert().bert
    layout = ModelLayout.of(base)
    assert layout.base is None and layout.layers is None and layout.classifier is None and not layout.has_top_head
    assert layout.embedding_block() is base.embeddings
    with pytest.raises(ValueError, match="needs an encoder with a list of layers"):
        select_parameters(base, "top")
    with pytest.raises(ValueError, match="lacks the BERT-family layout"):
        TopHead(base)
    with pytest.raises(SaliencyError, match="module_name="):
        find_embedding_block(nn.Sequential(nn.Linear(2, 2)))


def test_the_cache_fingerprint_reads_the_config_inside_peft():
    """The model config in the fingerprint is the wrapped model's (the layout's ``inner``): the
    same adapters on two differently configured bases differ, the same on identical bases agree."""
    one, two = lora(None), lora(None)

    def fingerprint(model):
        return fingerprint_model(model, select_parameters(model, "lora"))

    same = fingerprint(one) == fingerprint(two)
    two.get_base_model().config.id2label = {0: "no", 1: "yes"}
    assert same and fingerprint(one) != fingerprint(two)


# ------------------------------------------------------------------ old names and new homes


def test_old_names_are_aliases_of_the_moved_objects():
    assert (loss.Objective, loss.FullModelObjective, loss.CachedTopObjective, loss.make_objective) == (
        TrainLoss, FullModelLoss, CachedTopLoss, make_train_loss)
    for name in ("Objective", "FullModelObjective", "CachedTopObjective", "make_objective", "PreparedData",
                 "tokenize", "prepare_data", "full_hvp", "BLOCK_ROWS", "PAD_MULTIPLE"):
        assert getattr(influence, name) is getattr(loss, name), name
    for name in ("unwrap_model", "eval_mode", "influence_mode"):
        assert getattr(influence, name) is getattr(modeling, name), name
    for name in ("loss_measurement_gradient", "saliency_measurement", "saliency_measurement_gradient"):
        assert getattr(influence, name) is getattr(measurement, name), name
    for name in ("CG_PASSES", "choose_solver", "resolve_damping_scale", "lowrank_hessian", "compute_s_test"):
        assert getattr(influence, name) is getattr(solve, name), name
    for name in ("find_embedding_block", "suspend_input_require_grads", "autocast_disabled", "AUTOCAST_DEVICE_TYPES",
                 "INPUT_KEYS", "model_device", "model_inputs"):
        assert getattr(saliency, name) is getattr(modeling, name), name
    for name in ("EMPTY_TEXT", "NO_TOKEN_TEXT", "PREFIX_WORDS", "encode_words", "word_encoding", "scored_words",
                 "truncated_words", "unscorable_texts"):
        assert getattr(saliency, name) is getattr(text, name), name
    assert explain.predict_proba is modeling.predict_proba is hf_pairdots.predict_proba
    assert features.first_position_only is modeling.first_position_only


def test_the_loss_keeps_its_old_name_in_cache_keys():
    """s_test caches written before the rename stay valid: the key holds the old class name."""
    model = bert()
    assert make_train_loss(model, "head").key_name == "CachedTopObjective"
    assert make_train_loss(model, "last:1").key_name == "FullModelObjective"

    class MyLoss(FullModelLoss):
        """A user's subclass: keyed by its own name."""

    assert MyLoss(model, select_parameters(model, "head")).key_name == "MyLoss"


# ------------------------------------------------------------------------- PreparedData.shard


def test_shard_splits_the_batches_round_robin_and_the_pieces_reassemble(tok):
    model = bert()
    objective = make_train_loss(model, "last:1")  # not row-wise: one batch per 2 texts
    texts = ["good", "a bad movie", "fun and nice", "slow", "the plot was boring", "great", "awful acting", "ok"]
    data = prepare_data(objective, tok, texts, [i % 2 for i in range(8)], batch_size=2, max_length=16)
    s = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(0))
    pieces = []
    for rank in range(3):
        local, ids = data.shard(rank, 3)
        mine = data.batches[rank::3]
        assert [b["labels"] is m["labels"] for b, m in zip(local.batches, mine)] == [True] * len(mine)
        assert ids.tolist() == torch.cat([b["index"] for b in mine]).tolist()
        renumbered = torch.cat([b["index"] for b in local.batches]).tolist()
        assert renumbered == list(range(len(ids))) == list(range(local.size))
        pieces.append((ids, train_influence(objective, local, s)))
    assert sorted(torch.cat([i for i, _ in pieces]).tolist()) == list(range(8))
    assert torch.equal(reassemble(pieces, data.size), train_influence(objective, data, s))
    empty, none = data.shard(5, 6)  # 4 batches, 6 ranks: nothing left for rank 5
    assert empty.batches == [] and empty.size == 0 and none.tolist() == []
    with pytest.raises(ValueError, match="rank 3 outside world size 3"):
        data.shard(3, 3)


# --------------------------------------------------------------------- no private cross-imports


PACKAGE = pathlib.Path(hf_pairdots.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(path: pathlib.Path) -> list[str]:
    """``"module: name"`` for every private name that ``path`` takes from another module of the
    package: ``from .x import _y`` and ``x._y`` on a module imported with ``from . import x``."""
    tree = ast.parse(path.read_text())
    modules, found = set(), []
    for node in ast.walk(tree):
        inside = isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("hf_pairdots"))
        if inside:
            found += [f"{path.name}: {a.name}" for a in node.names if _private(a.name)]
            if node.module is None or node.module == "hf_pairdots":  # from . import ihvp
                modules |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and _private(node.attr):
            found.append(f"{path.name}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_a_private_name_of_another():
    assert private_imports(PACKAGE / "influence.py") == [] and len(list(PACKAGE.rglob("*.py"))) > 20
    assert [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_imports(path)] == []


def test_the_private_import_check_sees_both_forms(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from .saliency import _check_labels, model_inputs\nfrom . import ihvp\nihvp._x()\nihvp.lissa\n")
    assert private_imports(path) == ["m.py: _check_labels", "m.py: ihvp._x"]
