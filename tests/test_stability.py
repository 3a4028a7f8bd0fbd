"""LiSSA repeat agreement (``repeat_relative_spread``, ``keep_repeats``) and :func:`topk_overlap`."""

import pytest
import torch

from hf_pairdots.autograd import hvp
from hf_pairdots.ihvp import lissa
from hf_pairdots.stability import topk_overlap

pytestmark = pytest.mark.usefixtures("one_torch_thread")

P, N, Q, R = 8, 120, 3, 3
F64 = torch.float64
DAMPING = 0.01


def _ridge():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, P, generator=gen, dtype=F64)
    v = torch.randn(Q, P, generator=gen, dtype=F64)
    h = x.T @ x / N + 0.05 * torch.eye(P, dtype=F64)
    return x, v, h


def test_deterministic_hvp_repeats_agree_exactly():
    x, v, h = _ridge()
    theta = torch.zeros(P, dtype=F64)

    def loss(th):
        return (0.5 * (x @ th) ** 2).mean() + 0.025 * th @ th

    result = lissa(lambda u, step: hvp(loss, theta, u), v, damping=DAMPING, scale=8.0, depth=200, repeat=R,
                   keep_repeats=True)
    assert len(result.repeat_relative_spread) == Q and max(result.repeat_relative_spread) < 1e-12
    assert result.repeats.shape == (R, Q, P)
    assert torch.allclose(result.repeats.mean(0), result.x, rtol=1e-12, atol=1e-14)
    assert "repeats" not in result.diagnostics and "repeat_relative_spread" not in result.diagnostics  # no per-row values
    scores = [-(result.repeats[r] @ x.T) for r in range(R)]  # (Q, N) stand-in for train_influence
    assert topk_overlap(scores, 5) == [1.0] * Q


def test_minibatch_hvp_repeats_spread():
    x, v, h = _ridge()

    def sample(u, step):
        rows = torch.randperm(N, generator=torch.Generator().manual_seed(step))[:10]
        xb = x[rows]
        return u @ (xb.T @ xb / 10 + 0.05 * torch.eye(P, dtype=F64))

    result = lissa(sample, v, damping=DAMPING, scale=20.0, depth=100, repeat=R, keep_repeats=True)
    assert all(1e-4 < s < 1.0 for s in result.repeat_relative_spread)
    reps = result.repeats
    mean = reps.mean(0)
    expected = ((reps - mean).pow(2).sum(2).mean(0).sqrt() / mean.norm(dim=1))  # the definition, two-pass
    assert torch.allclose(torch.tensor(result.repeat_relative_spread, dtype=F64), expected, rtol=1e-8)
    assert torch.allclose(mean, result.x, rtol=1e-10, atol=1e-12)


def test_single_repeat_and_default_keep_nothing_extra():
    _, v, h = _ridge()
    result = lissa(lambda u, step: u @ h, v, damping=DAMPING, scale=8.0, depth=20)
    assert result.repeat_relative_spread is None and result.repeats is None
    result = lissa(lambda u, step: u @ h, v, damping=DAMPING, scale=8.0, depth=20, repeat=2)
    assert result.repeats is None and len(result.repeat_relative_spread) == Q
    one = lissa(lambda u, step: u @ h, v, damping=DAMPING, scale=8.0, depth=20, keep_repeats=True)
    assert one.repeats.shape == (1, Q, P)


def test_topk_overlap_hand_computed():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0],
                      [1.0, 2.0, 3.0, 4.0, 5.0]])
    b = torch.tensor([[5.0, 4.0, 1.0, 3.0, 2.0],    # top-2 {0,1} vs {0,1}: 1
                      [5.0, 4.0, 3.0, 2.0, 1.0]])   # top-2 {3,4} vs {0,1}: 0
    c = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0],    # top-2 {0,2}
                      [1.0, 2.0, 3.0, 5.0, 4.0]])   # top-2 {3,4}
    assert topk_overlap([a, b], 2) == [1.0, 0.0]
    # query 0: (a,b) 1, (a,c) |{0}|/|{0,1,2}| = 1/3, (b,c) 1/3 -> 5/9
    # query 1: (a,b) 0, (a,c) 1, (b,c) 0 -> 1/3
    got = topk_overlap([a, b, c], 2)
    assert got == pytest.approx([5 / 9, 1 / 3])
    # k = 3, query 0: a {0,1,2}, b {0,1,3}: 2/4
    assert topk_overlap([a, b], 3)[0] == pytest.approx(0.5)
    assert topk_overlap([a, b], 99) == [1.0, 1.0]  # k capped at N


def test_topk_overlap_errors():
    a = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="at least 2 repeats"):
        topk_overlap([a], 1)
    with pytest.raises(ValueError, match="one \\(Q, N\\) shape"):
        topk_overlap([a, torch.zeros(2, 5)], 1)
    with pytest.raises(ValueError, match="k=0"):
        topk_overlap([a, a], 0)
