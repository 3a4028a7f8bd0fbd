"""The cached-feature route (:class:`~hf_pairdots.loss.CachedTopLoss`) beyond BERT (issue 13,
item 3): every encoder family whose top can be cut the same way takes it, and gets the numbers
of the whole model; layouts that only look alike take the general route.

Covered: BERT, RoBERTa and XLM-R (``dense`` + ``out_proj`` heads reading <s>), ELECTRA, MPNet
(relative-position bias in the encoder), DeBERTa-v2 (ContextPooler + classifier; with relative
attention, its norm of the relative embeddings and the ConvLayer, as DeBERTa-v3 is configured).
Refused: Megatron-BERT (pre-LayerNorm: a norm inside each layer and after the encoder, which the
cached top would skip: before this fix its cached losses were off by up to 6e-4), DeBERTa-v2
with one layer and a ConvLayer (run after that last layer), and every non-BERT layout.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from architectures import CORPUS, model as tiny_model, tokenizer
from hf_pairdots.autograd import select_parameters
from hf_pairdots.features import TopHead, available_cuts, compute_features, supports_top_head
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, TrainLoss, make_train_loss
from hf_pairdots.modeling import model_inputs

DEBERTA_V3 = dict(relative_attention=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                  conv_kernel_size=3, position_biased_input=False, max_relative_positions=-1, position_buckets=16)
FAMILIES = {"bert": {}, "roberta": {}, "xlm-roberta": {}, "electra": {}, "mpnet": {}, "deberta-v2": {},
            "deberta-v3": DEBERTA_V3}


def build(name: str, **overrides):
    kind = "deberta-v2" if name == "deberta-v3" else name
    tok = tokenizer(kind)
    net = tiny_model(kind, tok, initializer_range=0.2, **{**FAMILIES.get(name, {}), **overrides})
    net.set_attn_implementation("eager")  # SDPA has no double backward (saliency gradients)
    batch = dict(tok(CORPUS[:6], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1, 1, 0, 1, 0])
    return net, tok, batch


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_top_head_equals_the_model_logits_at_every_cut(name):
    net, _, batch = build(name)
    assert supports_top_head(net)
    cuts = available_cuts(net)
    assert cuts == (("ffn", "pooler", "classifier") if name in ("bert", "deberta-v2", "deberta-v3") else ("ffn", "pooler"))
    with torch.no_grad():
        logits = net(**model_inputs(batch)).logits
        assert float((logits[:, 0] - logits[:, 1]).std()) > 1e-3  # the inputs matter
        for cut in cuts:
            head = TopHead(net, cut)(compute_features(net, batch, cut=cut))
            assert torch.allclose(head, logits, rtol=1e-5, atol=1e-6), cut


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("preset", ["head", "top"])
def test_cached_loss_and_gradient_equal_the_whole_model(name, preset):
    """The default ``"head"`` and the ``"top"`` preset: cached per-example losses and the mean
    loss's gradient equal :class:`FullModelLoss`'s, whose mean equals the model's own loss."""
    net, _, batch = build(name)
    params = select_parameters(net, preset)
    cached, full = make_train_loss(net, params), FullModelLoss(net, params)
    assert isinstance(cached, CachedTopLoss)
    assert cached.head.cut == {"head": "pooler", "top": "ffn"}[preset]
    bc, bf = cached.prepare(batch), full.prepare(batch)
    with torch.no_grad():
        lc, lf = cached.per_example_loss(cached.theta, bc), full.per_example_loss(full.theta, bf)
        assert float(lf.mean()) == pytest.approx(float(net(**batch).loss), rel=1e-6)
    assert torch.allclose(lc, lf, rtol=1e-5, atol=1e-7)
    gc = torch.func.grad(lambda t: cached.mean_loss(t, bc))(cached.theta)
    gf = torch.func.grad(lambda t: full.mean_loss(t, bf))(full.theta)
    assert float(gf.detach().norm()) > 1e-3 and rel(gc.detach(), gf.detach()) < 1e-5


@pytest.mark.parametrize("name", ["roberta", "electra", "mpnet", "deberta-v3"])
@pytest.mark.parametrize("mode", ["gradient", "grad_x_input"])
def test_cached_saliency_gradients_equal_the_double_backward_route(name, mode):
    """∇θ w_y(e) of Eq. 5 by one Jacobian-vector product below the cut equals the general route
    (double backward through the whole model), row by row."""
    net, tok, _ = build(name)
    objective = make_train_loss(net, "head")
    enc = dict(tok(["the plot was good but the acting was bad"], return_tensors="pt"))
    labels, positions = [1, 0], [[2, 3], [5]]
    fast = objective.saliency_gradients(enc, labels, positions, mode=mode)
    general = TrainLoss.saliency_gradients(objective, enc, labels, positions, mode=mode)
    for row in range(2):
        assert float(general[row].detach().norm()) > 1e-4
        assert rel(fast[row], general[row]) < 1e-4
    assert rel(fast[0], fast[1]) > 0.1


def test_megatron_bert_pre_layernorm_takes_the_general_route():
    """Megatron-BERT has BERT's names but a LayerNorm before each feed-forward block and after the
    encoder: the cached top would skip both. It is refused, and the general route is exact."""
    torch.manual_seed(0)
    cfg = transformers.MegatronBertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, num_labels=2)
    net = transformers.MegatronBertForSequenceClassification(cfg).eval()
    assert not supports_top_head(net) and available_cuts(net) == ()
    with pytest.raises(ValueError, match="BERT-family layout"):
        TopHead(net, "pooler")
    objective = make_train_loss(net, "top")
    assert isinstance(objective, FullModelLoss)
    batch = {"input_ids": torch.randint(5, 100, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0])}
    with torch.no_grad():
        loss = objective.mean_loss(objective.theta, objective.prepare(batch))
        assert float(loss) == pytest.approx(float(net(**batch).loss), rel=1e-6)


def test_deberta_conv_after_the_only_layer_takes_the_general_route():
    net, _, _ = build("deberta-v3", num_hidden_layers=1)
    assert net.deberta.encoder.conv is not None and not supports_top_head(net)
    assert isinstance(make_train_loss(net, "head"), FullModelLoss)


@pytest.mark.parametrize("kind", ["distilbert", "albert", "modernbert", "gpt2", "bart"])
def test_other_layouts_take_the_general_route(kind):
    net = tiny_model(kind)
    assert not supports_top_head(net)
    assert isinstance(make_train_loss(net, "head"), FullModelLoss)
    with pytest.raises(ValueError, match="cut="):
        compute_features(net, {"input_ids": torch.tensor([[3, 4]])}, cut="ffn")
