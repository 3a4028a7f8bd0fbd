"""The ``"last:K"`` parameter preset: the last K encoder layers (all of each layer) + pooler + classifier.

tiny_bert (hidden 32, intermediate 64, 2 layers): one encoder layer has
4 x (32·32 + 32) (attention q, k, v, output) + 64 (LayerNorm) + (32·64 + 64) (intermediate)
+ (64·32 + 32) + 64 (output, LayerNorm) = 8544 parameters in 16 tensors; the head (pooler
32·32 + 32, classifier 32·2 + 2) is 1122 in 4 tensors.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from hf_pairdots.autograd import select_parameters
from hf_pairdots.models import tiny_bert

LAYER, LAYER_TENSORS = 8544, 16
HEAD, HEAD_TENSORS = 1122, 4


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(seed=0)


@pytest.mark.parametrize("k", [1, 2])
def test_last_k_counts(bert, k):
    pset = select_parameters(bert, f"last:{k}")
    assert pset.numel == k * LAYER + HEAD
    assert len(pset.names) == k * LAYER_TENSORS + HEAD_TENSORS
    layers = {n.split(".")[3] for n in pset.names if n.startswith("bert.encoder.layer.")}
    assert layers == {str(i) for i in range(2 - k, 2)}
    assert set(select_parameters(bert, "head").names) <= set(pset.names)
    assert set(select_parameters(bert, "top").names) <= set(select_parameters(bert, "last:1").names)
    assert not any("embeddings" in n for n in pset.names)
    assert pset.flat().shape == (pset.numel,)


def test_last_all_layers_is_everything_but_embeddings(bert):
    everything = select_parameters(bert, "all")
    embeddings = sum(p.numel() for n, p in bert.named_parameters() if ".embeddings." in n)
    assert select_parameters(bert, "last:2").numel == everything.numel - embeddings


def test_last_k_respects_requires_grad(bert):
    model = tiny_bert(seed=1)
    for p in model.bert.encoder.layer[1].attention.parameters():
        p.requires_grad_(False)
    attention = sum(p.numel() for p in model.bert.encoder.layer[1].attention.parameters())
    assert select_parameters(model, "last:1").numel == LAYER + HEAD - attention


def test_last_k_on_peft_model_takes_the_trainable_parameters_with_the_prefix():
    base = tiny_bert(seed=2)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    pset = select_parameters(model, "last:1")
    assert all(n.startswith("base_model.model.") for n in pset.names)
    lora_layer1 = {n for n, p in model.named_parameters()
                   if "lora_" in n and ".encoder.layer.1." in n and p.requires_grad}
    assert len(lora_layer1) == 4  # A and B of query and value
    head = set(select_parameters(model, "head").names)  # peft's trainable classifier copy (pooler is frozen)
    assert head and all("modules_to_save" in n for n in head)
    assert set(pset.names) == lora_layer1 | head
    two = select_parameters(model, "last:2")
    assert len(two.names) == 8 + len(head)
    assert set(select_parameters(model, "lora").names) <= set(two.names)


@pytest.mark.parametrize("preset, message", [
    ("last:0", r"K=0 is out of range; this model has 2 encoder layers, so use 1 <= K <= 2"),
    ("last:3", r"K=3 is out of range; this model has 2 encoder layers"),
    ("last:x", r"write 'last:K' with an integer K >= 1"),
    ("last:", r"write 'last:K'"),
    ("last:-1", r"write 'last:K'"),
    ("last", r"use one of .*'last:K'"),
])
def test_last_k_errors(bert, preset, message):
    with pytest.raises(ValueError, match=message):
        select_parameters(bert, preset)


def test_last_k_needs_a_bert_family_encoder():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

    with pytest.raises(ValueError, match=r"params='last:1' needs an encoder with a list of layers"):
        select_parameters(Flat(), "last:1")
    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(DistilBertConfig(dim=16, hidden_dim=32, n_layers=1, n_heads=2,
                                                                  vocab_size=100, max_position_embeddings=16))
    last = select_parameters(distil, "last:1")  # DistilBERT's layers are `transformer.layer`
    layer = sum(p.numel() for p in distil.distilbert.transformer.layer[0].parameters())
    head = sum(p.numel() for m in (distil.pre_classifier, distil.classifier) for p in m.parameters())
    assert last.numel == layer + head
    assert select_parameters(distil, "classifier").numel == head


def test_auto_preset_is_lora_on_peft_models_and_head_otherwise():
    """Issue #4: a peft model is explained over its adapters by default (ExplainArguments.params
    = "auto"); a plain model over pooler + classifier."""
    from hf_pairdots.arguments import ExplainArguments

    assert ExplainArguments().params == "auto"
    plain = tiny_bert(seed=0)
    assert select_parameters(plain, "auto").names == select_parameters(plain, "head").names
    lora = get_peft_model(tiny_bert(seed=0), LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    names = select_parameters(lora, "auto").names
    assert names == select_parameters(lora, "lora").names and names and all("lora_" in n for n in names)
