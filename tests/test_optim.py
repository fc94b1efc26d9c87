"""LARS against the LARS paper's update rule, the bias/norm exclusion, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mvssl_core.backbones import ConvNet, resnet
from mvssl_core.optim import LARS, param_groups, scaled_lr, set_lr, warmup_cosine


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3), nn.LayerNorm(3))


# ----------------------------------------------------------------------------- param_groups


def test_param_groups_exclude_biases_and_norms():
    model = _model()
    decay, excluded = param_groups(model, weight_decay=1e-4)
    assert decay["weight_decay"] == 1e-4 and not decay["lars_exclude"]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model[0].weight), id(model[3].weight)}
    assert ids(excluded["params"]) == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                       id(model[3].bias), id(model[4].weight), id(model[4].bias)}


@pytest.mark.parametrize("make", [lambda: resnet("resnet18", small_images=True), lambda: ConvNet(norm="group")])
def test_param_groups_cover_each_parameter_once(make):
    model = make()
    groups = param_groups(model, 0.05)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    decay = groups[0]["params"]
    assert all(p.ndim == 4 for p in decay)  # only conv weights are decayed/adapted (fc is Identity)
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))
                   for p in m.parameters()}
    assert norm_params and norm_params <= {id(p) for p in groups[1]["params"]}


def test_param_groups_skip_frozen_and_reject_bad_input():
    model = _model()
    model[0].weight.requires_grad_(False)
    decay = param_groups(model, 0.0)[0]["params"]
    assert all(p is not model[0].weight for p in decay)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1.0)
    with pytest.raises(TypeError, match="model"):
        param_groups([model[0].weight], 0.1)


# ----------------------------------------------------------------------------- LARS


def _lars_reference(weights, grads_per_step, lr, momentum, wd, eta, excluded, trust_norm):
    """Algorithm 1 of You, Gitman & Ginsburg (2017), one tensor ("layer") at a time, in float64:
    lambda = ||w|| / (||g|| + beta ||w||); v <- m v + gamma * eta * lambda * (g + beta w); w <- w - v.
    ``trust_norm="update_norm"`` uses ||g + beta w|| as the denominator (SimCLR/BYOL code). Excluded
    tensors: v <- m v + gamma * g (no decay, no adaptation)."""
    w = [x.detach().double().clone() for x in weights]
    v = [torch.zeros_like(x) for x in w]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g.double()
            if excluded[i]:
                step = lr * g
            else:
                w_norm = math.sqrt(float((w[i] ** 2).sum()))
                if trust_norm == "paper":
                    denom = math.sqrt(float((g**2).sum())) + wd * w_norm
                else:
                    denom = math.sqrt(float(((g + wd * w[i]) ** 2).sum()))
                local = eta * w_norm / denom if w_norm > 0 and denom > 0 else 1.0
                step = lr * local * (g + wd * w[i])
            v[i] = momentum * v[i] + step
            w[i] = w[i] - v[i]
    return w


@pytest.mark.parametrize("trust_norm", ["paper", "update_norm"])
@pytest.mark.parametrize("eta,wd", [(0.001, 1e-6), (0.02, 0.1)])
def test_lars_matches_the_paper_update(trust_norm, eta, wd):
    model = _model(seed=1).double()
    with torch.no_grad():
        model[3].weight.zero_()  # a zero-norm layer: its trust ratio falls back to 1
    params = list(model.parameters())
    groups = param_groups(model, weight_decay=wd)
    excluded_ids = {id(p) for p in groups[1]["params"]}
    excluded = [id(p) in excluded_ids for p in params]
    gen = torch.Generator().manual_seed(3)
    grads_per_step = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params] for _ in range(4)]
    expected = _lars_reference(params, grads_per_step, lr=0.7, momentum=0.9, wd=wd, eta=eta,
                               excluded=excluded, trust_norm=trust_norm)

    opt = LARS(groups, lr=0.7, momentum=0.9, trust_coefficient=eta, trust_norm=trust_norm)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for p, e, ex in zip(params, expected, excluded):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    # the adapted steps are really small (eta ||w|| / ||g||), the excluded ones are plain SGD
    assert not torch.equal(params[0].detach(), _model(seed=1).double()[0].weight.detach())


def test_lars_excluded_group_is_sgd_with_momentum():
    model = _model(seed=2)
    twin = _model(seed=2)
    excluded = param_groups(model, 0.5)[1]
    twin_excluded = param_groups(twin, 0.5)[1]["params"]
    lars = LARS([excluded], lr=0.3, momentum=0.9, weight_decay=0.5)
    sgd = torch.optim.SGD(twin_excluded, lr=0.3, momentum=0.9)
    for step in range(3):
        torch.manual_seed(step)
        for p, q in zip(excluded["params"], twin_excluded):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        lars.step()
        sgd.step()
    for p, q in zip(excluded["params"], twin_excluded):
        torch.testing.assert_close(p, q)


def test_lars_resumes_from_state_dict():
    def run(steps, opt, model, start=0):
        for s in range(start, start + steps):
            torch.manual_seed(100 + s)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            opt.step()

    a = _model(seed=4)
    opt_a = LARS(param_groups(a, 1e-4), lr=0.5)
    run(4, opt_a, a)
    b = _model(seed=4)
    opt_b = LARS(param_groups(b, 1e-4), lr=0.5)
    run(2, opt_b, b)
    c = _model(seed=0)
    c.load_state_dict(b.state_dict())
    opt_c = LARS(param_groups(c, 1e-4), lr=0.5)
    opt_c.load_state_dict(opt_b.state_dict())
    run(2, opt_c, c, start=2)
    for p, q in zip(a.parameters(), c.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _lars_run(foreach, dtype, trust_norm, wd, momentum, eps, steps=5):
    """A few LARS steps on ``_model`` (one zero-norm layer, one tensor without a gradient at step 1)."""
    model = _model(seed=5).to(dtype)
    with torch.no_grad():
        model[3].weight.zero_()
    opt = LARS(param_groups(model, wd), lr=0.5, momentum=momentum, trust_norm=trust_norm, eps=eps, foreach=foreach)
    grads_seen = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        for i, p in enumerate(model.parameters()):
            p.grad = None if (step == 1 and i == 2) else torch.randn(p.shape, generator=gen, dtype=dtype)
        grads_seen.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
        opt.step()
        for p, g in zip(model.parameters(), grads_seen[-1]):  # the step leaves the gradients alone
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trust_norm", ["paper", "update_norm"])
@pytest.mark.parametrize("wd,momentum,eps", [(1e-4, 0.9, 0.0), (0.0, 0.9, 0.0), (0.1, 0.0, 1e-8)])
def test_lars_foreach_equals_the_loop(dtype, trust_norm, wd, momentum, eps):
    loop_model, loop_opt = _lars_run(False, dtype, trust_norm, wd, momentum, eps)
    model, opt = _lars_run(True, dtype, trust_norm, wd, momentum, eps)
    assert not torch.equal(model[0].weight, _model(seed=5).to(dtype)[0].weight)  # it moved
    # on CPU the foreach operations run the loop's kernels tensor by tensor: equal bit for bit
    for p, q in zip(model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    state, loop_state = opt.state_dict()["state"], loop_opt.state_dict()["state"]
    assert state.keys() == loop_state.keys()
    for key in state:
        assert state[key].keys() == loop_state[key].keys() == ({"momentum_buffer"} if momentum else set())
        for name in state[key]:
            torch.testing.assert_close(state[key][name], loop_state[key][name], rtol=0, atol=0)


def test_lars_foreach_handles_mixed_dtypes_and_refuses_a_bad_flag():
    w32 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    w64 = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    twins = [w32.detach().clone().requires_grad_(True), w64.detach().clone().requires_grad_(True)]
    opts = [LARS([w32, w64], lr=0.3, weight_decay=0.01, foreach=True),
            LARS(twins, lr=0.3, weight_decay=0.01, foreach=False)]
    for step in range(3):
        for p in [w32, w64, *twins]:
            p.grad = torch.full_like(p, 0.1 * (step + 1))
        for opt in opts:
            opt.step()
    torch.testing.assert_close(w32, twins[0], rtol=0, atol=0)
    torch.testing.assert_close(w64, twins[1], rtol=0, atol=0)
    with pytest.raises(TypeError, match="foreach"):
        LARS([w32], foreach="yes")


@pytest.mark.parametrize("foreach,expected", [(None, "loop"), (True, "foreach"), (False, "loop")])
def test_lars_default_is_the_loop_on_cpu_and_foreach_elsewhere(monkeypatch, foreach, expected):
    """As torch.optim: foreach by default on accelerators; on the CPU the loop, which is faster there."""
    taken = []
    for name in ("loop", "foreach"):
        monkeypatch.setattr(LARS, f"_update_{name}", lambda self, group, params, _n=name: taken.append(_n))
    model = _model()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt = LARS(param_groups(model, 1e-4), foreach=foreach)
    opt.step()
    assert taken == [expected, expected]  # one call per group (one device and dtype each)
    meta = nn.Linear(3, 2, device="meta")  # stands in for an accelerator's tensors (the updates are stubs)
    for p in meta.parameters():
        p.grad = torch.ones_like(p)
    taken.clear()
    LARS(param_groups(meta, 1e-4), foreach=foreach).step()
    assert taken == 2 * ["loop" if foreach is False else "foreach"]


def test_lars_rejects_bad_hyperparameters():
    params = list(_model().parameters())
    with pytest.raises(ValueError, match="lr"):
        LARS(params, lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        LARS(params, momentum=1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(params, trust_coefficient=-1.0)
    with pytest.raises(ValueError, match="trust_norm"):
        LARS(params, trust_norm="clip")


# ----------------------------------------------------------------------------- schedules


def test_warmup_cosine_key_steps():
    kw = dict(total_steps=110, warmup_steps=10, base_value=2.0, final_value=0.2, start_value=0.0)
    assert warmup_cosine(0, **kw) == 0.0
    assert warmup_cosine(5, **kw) == pytest.approx(1.0)  # half-way through the linear warm-up
    assert warmup_cosine(10, **kw) == pytest.approx(2.0)  # end of warm-up: the peak
    assert warmup_cosine(60, **kw) == pytest.approx(1.1)  # middle of the cosine: (base + final) / 2
    assert warmup_cosine(35, **kw) == pytest.approx(0.2 + 1.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(110, **kw) == pytest.approx(0.2)  # the end
    assert warmup_cosine(500, **kw) == 0.2  # past the end it stays there
    values = [warmup_cosine(s, **kw) for s in range(111)]
    assert all(a < b for a, b in zip(values[:10], values[1:11]))  # rising warm-up
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # falling cosine


def test_warmup_cosine_without_warmup_and_rising_schedules():
    assert warmup_cosine(0, total_steps=4, warmup_steps=0, base_value=1.0) == 1.0
    assert warmup_cosine(4, total_steps=4, warmup_steps=0, base_value=1.0) == 0.0
    # a rising schedule (e.g. DINO's weight decay 0.04 -> 0.4) is the same formula
    assert warmup_cosine(2, total_steps=4, warmup_steps=0, base_value=0.04, final_value=0.4) == pytest.approx(0.22)


@pytest.mark.parametrize("bad", [dict(total_steps=0), dict(warmup_steps=10), dict(warmup_steps=-1), dict(step=-1)])
def test_warmup_cosine_rejects_bad_steps(bad):
    kw = dict(step=0, total_steps=10, warmup_steps=2, base_value=1.0) | bad
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        warmup_cosine(**kw)


def test_scaled_lr_and_set_lr():
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)  # SimCLR: 0.3 x 4096 / 256
    model = _model()
    groups = param_groups(model, 1e-6)
    groups[1]["lr_scale"] = 0.1
    opt = LARS(groups, lr=1.0)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, pytest.approx(0.05)]


# ----------------------------------------------------------------------------- bad numbers are refused by name
# (issue 15: NaN, inf, strings, bools and None were accepted or failed with a message naming nothing)

NAN, INF = float("nan"), float("inf")
_BAD_NONNEG = [(-0.1, ValueError), (NAN, ValueError), (INF, ValueError), ("0.1", TypeError), (True, TypeError),
               (None, TypeError)]


@pytest.mark.parametrize("bad, error", _BAD_NONNEG)
def test_param_groups_refuses_a_weight_decay_that_is_not_a_finite_number_ge_0(bad, error):
    with pytest.raises(error, match="weight_decay"):
        param_groups(_model(), bad)


@pytest.mark.parametrize("arg", ["weight_decay", "eps"])
@pytest.mark.parametrize("bad, error", _BAD_NONNEG)
def test_lars_refuses_a_weight_decay_or_eps_that_is_not_a_finite_number_ge_0(arg, bad, error):
    with pytest.raises(error, match=arg):
        LARS(_model().parameters(), **{arg: bad})


@pytest.mark.parametrize("bad, error", [("0.5", TypeError), (None, TypeError), (True, TypeError), (NAN, ValueError),
                                        (-0.1, ValueError), (1.0, ValueError)])
def test_lars_refuses_a_momentum_outside_0_1_by_name(bad, error):
    with pytest.raises(error, match="momentum"):
        LARS(_model().parameters(), momentum=bad)


@pytest.mark.parametrize("arg", ["base_value", "final_value", "start_value"])
@pytest.mark.parametrize("bad, error", [(NAN, ValueError), (INF, ValueError), (-INF, ValueError),
                                        ("0.1", TypeError), (None, TypeError), (True, TypeError)])
def test_warmup_cosine_refuses_values_that_are_not_finite_numbers(arg, bad, error):
    kw = dict(step=0, total_steps=10, warmup_steps=2, base_value=1.0) | {arg: bad}
    with pytest.raises(error, match=arg):
        warmup_cosine(**kw)


def test_warmup_cosine_takes_ints_and_one_element_tensors():
    assert warmup_cosine(1, 10, 2, 2, final_value=0, start_value=0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 2, torch.tensor(2.0), final_value=torch.tensor(0.5)) == pytest.approx(0.5)


@pytest.mark.parametrize("bad, error", _BAD_NONNEG)
def test_set_lr_refuses_a_bad_lr_and_leaves_the_groups_unchanged(bad, error):
    opt = torch.optim.SGD(_model().parameters(), lr=0.3)
    with pytest.raises(error, match="lr"):
        set_lr(opt, bad)
    assert [g["lr"] for g in opt.param_groups] == [0.3]
    set_lr(opt, 0)  # the first step of a warm-up from 0
    assert [g["lr"] for g in opt.param_groups] == [0.0]
