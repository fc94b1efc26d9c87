"""mvssl_core.critics: shapes, the scores against a hand-written reference, gradients (gradcheck in float64),
and the architecture each critic builds from its MLPSpec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvssl_core import bounds
from mvssl_core.critics import Bilinear, ConcatCritic, GaussianQ, SeparableCritic
from mvssl_core.heads import MLPSpec


def _pair(k: int, dim: int, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, dim, generator=gen, dtype=dtype), torch.randn(k, dim, generator=gen, dtype=dtype)


@pytest.mark.parametrize("k,dim,layers", [(2, 1, 1), (5, 3, 2), (16, 8, 3)])
def test_separable_scores_are_dot_products_of_the_two_embeddings(k, dim, layers):
    torch.manual_seed(0)
    critic = SeparableCritic(dim, MLPSpec(hidden=7, out=4, layers=layers, bn=False))
    x, y = _pair(k, dim)
    with torch.no_grad():
        scores = critic(x, y)
        gx, hy = critic.g(x), critic.h(y)
    assert scores.shape == (k, k)
    assert gx.shape == hy.shape == (k, 4)
    reference = torch.tensor([[float(gx[i] @ hy[j]) for j in range(k)] for i in range(k)])
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5)


def test_separable_networks_are_the_spec():
    """Linear/activation layers as MLPSpec says: 2 hidden GELU layers here, g built before h."""
    critic = SeparableCritic(3, MLPSpec(hidden=5, out=2, layers=3, bn=False, activation="gelu"))
    for net in (critic.g, critic.h):
        assert [type(m) for m in net] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
        assert [tuple(m.weight.shape) for m in net if isinstance(m, nn.Linear)] == [(5, 3), (5, 5), (2, 5)]
        assert all(m.bias is not None for m in net if isinstance(m, nn.Linear))
    names = [n for n, _ in critic.named_parameters()]
    assert names[0].startswith("g.") and names[-1].startswith("h.")


@pytest.mark.parametrize("k,dim,layers", [(2, 1, 2), (6, 4, 2), (9, 3, 4)])
def test_concat_scores_equal_the_mlp_on_each_concatenated_pair(k, dim, layers):
    torch.manual_seed(1)
    critic = ConcatCritic(dim, MLPSpec(hidden=6, out=1, layers=layers, bn=False))
    x, y = _pair(k, dim)
    scores = critic(x, y)
    assert scores.shape == (k, k)
    # the unsplit first layer: W = [W_x, W_y] on [x_i; y_j]
    w = torch.cat([critic.first_x.weight, critic.first_y.weight], dim=1)
    for i in range(k):
        for j in range(k):
            h = torch.relu(w @ torch.cat([x[i], y[j]]) + critic.first_x.bias)
            torch.testing.assert_close(scores[i, j], critic.rest(h).squeeze(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec,match", [
    (MLPSpec(hidden=4, out=1, layers=1, bn=False), "spec.layers"),
    (MLPSpec(hidden=4, out=2, layers=2, bn=False), "spec.out"),
    (MLPSpec(hidden=4, out=1, layers=2, bn=True), "spec.bn"),
    (MLPSpec(hidden=4, out=1, layers=2, bn=False, last_bn=True), "spec.bn"),
])
def test_concat_refuses_specs_it_cannot_build(spec, match):
    with pytest.raises(ValueError, match=match):
        ConcatCritic(3, spec)


def test_bilinear_scores_and_initialisation():
    critic = Bilinear(4, scale=0.5)
    torch.testing.assert_close(critic.W.detach(), 0.5 * torch.eye(4))
    a, b = _pair(5, 4)
    with torch.no_grad():
        critic.W.copy_(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    scores = critic(a, b)
    assert scores.shape == (5, 5)
    torch.testing.assert_close(scores, torch.einsum("id,de,je->ij", a, critic.W, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: SeparableCritic(3, MLPSpec(hidden=4, out=2, layers=2, bn=False)),
    lambda: SeparableCritic(3, MLPSpec(hidden=4, out=2, layers=2, bn=False, activation="gelu")),
    lambda: ConcatCritic(3, MLPSpec(hidden=4, out=1, layers=3, bn=False)),
    lambda: Bilinear(3),
], ids=["separable-relu", "separable-gelu", "concat", "bilinear"])
def test_gradients_of_the_bound_through_the_critic(make):
    """gradcheck in float64 of InfoNCE of the critic's scores, in the inputs and in every parameter."""
    torch.manual_seed(2)
    critic = make().double()
    x, y = _pair(4, 3, dtype=torch.float64, seed=5)
    x.requires_grad_(True)
    y.requires_grad_(True)
    params = list(critic.parameters())
    names = [n for n, _ in critic.named_parameters()]

    def bound(x, y, *values):
        # the critic's function of its parameters: the same module, its parameters replaced by ``values``
        return bounds.infonce(torch.func.functional_call(critic, dict(zip(names, values)), (x, y)))

    inputs = (x, y, *(p.detach().clone().requires_grad_(True) for p in params))
    assert torch.autograd.gradcheck(bound, inputs, eps=1e-6, atol=1e-5)


def test_gaussian_q_mean_network_and_sigma_update():
    torch.manual_seed(0)
    q = GaussianQ(3, MLPSpec(hidden=5, out=2, layers=2, bn=False), momentum=0.9)
    assert [type(m) for m in q.mu] == [nn.Linear, nn.ReLU, nn.Linear]
    assert q.mu(torch.randn(7, 3)).shape == (7, 2)
    assert float(q.sigma2) == 1.0 and "sigma2" in dict(q.named_buffers())
    assert not any(b.requires_grad for b in q.buffers())
    q.update_sigma(torch.tensor(3.0))
    assert float(q.sigma2) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    q.update_sigma(torch.tensor(3.0))
    assert float(q.sigma2) == pytest.approx(0.9 * 1.2 + 0.1 * 3.0)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_gaussian_q_refuses_a_momentum_outside_0_1(momentum):
    with pytest.raises(ValueError, match="momentum"):
        GaussianQ(3, MLPSpec(hidden=5, out=3, layers=2, bn=False), momentum=momentum)


def test_same_seed_same_parameters_as_a_plain_mlp():
    """The critic's networks are drawn in the order a hand-written Linear/ReLU stack would draw them (so the
    numbers of the experiments that used one do not change): first g, then h, layer by layer."""
    torch.manual_seed(11)
    critic = SeparableCritic(3, MLPSpec(hidden=4, out=2, layers=2, bn=False))
    torch.manual_seed(11)
    reference = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)]
    for net, ref in zip((critic.g, critic.h), reference):
        for p, r in zip(net.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, r, rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input is refused by name
# (issue 15: sizes were reported as the internal ``in_dim`` or as torch's errors, bad numbers were accepted)

_BAD_DIM = [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("3", TypeError), (None, TypeError),
            (True, TypeError), (float("nan"), TypeError)]
_SPEC = MLPSpec(hidden=4, out=1, layers=2, bn=False)


@pytest.mark.parametrize("make", [
    lambda dim: Bilinear(dim),
    lambda dim: SeparableCritic(dim, _SPEC),
    lambda dim: ConcatCritic(dim, _SPEC),
    lambda dim: GaussianQ(dim, _SPEC, momentum=0.9),
], ids=["bilinear", "separable", "concat", "gaussian_q"])
@pytest.mark.parametrize("bad, error", _BAD_DIM)
def test_critics_refuse_a_bad_dim_by_its_name(make, bad, error):
    with pytest.raises(error, match=r"^dim must be an int"):
        make(bad)


@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                        ("0.1", TypeError), (True, TypeError), (None, TypeError)])
def test_bilinear_refuses_a_scale_that_is_not_a_finite_number_ge_0(bad, error):
    with pytest.raises(error, match="scale"):
        Bilinear(3, scale=bad)
    torch.testing.assert_close(Bilinear(3, scale=0).W.detach(), torch.zeros(3, 3))  # 0 is a valid start


@pytest.mark.parametrize("bad, error", [("0.5", TypeError), (None, TypeError), (True, TypeError),
                                        (float("nan"), ValueError)])
def test_gaussian_q_refuses_a_momentum_that_is_not_a_number(bad, error):
    with pytest.raises(error, match="momentum"):
        GaussianQ(3, MLPSpec(hidden=5, out=3, layers=2, bn=False), momentum=bad)


_BAD_BATCH = {
    "empty": (torch.zeros(0, 3), ValueError, "at least one sample"),
    "flattened": (torch.zeros(12), ValueError, r"shape \(N, 3\)"),
    "one more dim": (torch.zeros(1, 4, 3), ValueError, r"shape \(N, 3\)"),
    "narrower": (torch.zeros(4, 2), ValueError, "3 features"),
    "int dtype": (torch.zeros(4, 3, dtype=torch.long), TypeError, "floating-point"),
    "None": (None, TypeError, "torch.Tensor"),
    "nested list": ([[0.0] * 3] * 4, TypeError, "torch.Tensor"),
}


@pytest.mark.parametrize("make, names", [
    (lambda: Bilinear(3), ("a", "b")),
    (lambda: SeparableCritic(3, _SPEC), ("x", "y")),
    (lambda: ConcatCritic(3, _SPEC), ("x", "y")),
], ids=["bilinear", "separable", "concat"])
@pytest.mark.parametrize("label", list(_BAD_BATCH))
def test_critic_forward_refuses_a_bad_batch_by_its_name(make, names, label):
    bad, error, what = _BAD_BATCH[label]
    critic, good = make(), torch.randn(4, 3)
    for i, name in enumerate(names):
        args = [good, good]
        args[i] = bad
        with pytest.raises(error, match=rf"^{name} .*{what}"):
            critic(*args)


@pytest.mark.parametrize("make", [lambda: Bilinear(3), lambda: SeparableCritic(3, _SPEC),
                                  lambda: ConcatCritic(3, _SPEC)], ids=["bilinear", "separable", "concat"])
def test_critic_forward_propagates_nan_without_reading_values(make):
    """By design (no per-step device sync): a NaN entry reaches the scores of its row, the rest stay finite."""
    x, y = _pair(4, 3)
    x[1, 0] = float("nan")
    scores = make()(x, y)
    assert scores.shape == (4, 4)
    assert bool(scores[1].isnan().all()) and bool(torch.isfinite(scores[[0, 2, 3]]).all())
