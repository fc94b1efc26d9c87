"""mvssl_core.flows: the coupling flow is a bijection, and its log-determinant is the Jacobian's."""

from __future__ import annotations

import pytest
import torch

from mvssl_core.flows import AffineCoupling, Flow, coupling_masks


def _random_flow(dim: int, n_layers: int, seed: int, dtype=torch.float64, std: float = 0.3) -> Flow:
    """A flow with every weight random (a fresh flow is the identity, which would test nothing)."""
    torch.manual_seed(seed)
    flow = Flow(dim, n_layers=n_layers, hidden=16).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, std)
    return flow


@pytest.mark.parametrize("dim,n_layers", [(2, 1), (5, 3), (32, 6)])
def test_inverse_undoes_forward(dim, n_layers):
    flow = _random_flow(dim, n_layers, seed=dim)
    x = torch.randn(64, dim, dtype=torch.float64) * 2
    z, _ = flow(x)
    assert not torch.allclose(z, x)  # the random flow does something
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, rtol=1e-9, atol=1e-9)
    # float32: round-off grows with the product of the scales exp(s); at moderate weights it stays small
    flow32 = _random_flow(dim, n_layers, seed=dim, dtype=torch.float32, std=0.1)
    z32 = flow32(x.float())[0]
    assert not torch.allclose(z32, x.float(), atol=1e-3)
    torch.testing.assert_close(flow32.inverse(z32), x.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,n_layers", [(2, 2), (4, 4), (6, 5)])
def test_log_det_equals_autograd_jacobian(dim, n_layers):
    flow = _random_flow(dim, n_layers, seed=10 + dim)
    x = torch.randn(3, dim, dtype=torch.float64)
    _, log_det = flow(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(log_det[i], logabs, rtol=1e-10, atol=1e-10)


def test_new_flow_is_the_identity_and_masks_cover_every_coordinate():
    flow = Flow(7, n_layers=4)
    x = torch.randn(5, 7)
    z, log_det = flow(x)
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(5))
    masks = coupling_masks(7, 2)
    assert bool((~masks[0] | ~masks[1]).all())  # each coordinate is transformed by some layer


def test_gradients_flow_through_the_couplings():
    flow = _random_flow(6, 3, seed=1)
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    z, log_det = flow(x)
    (z.square().sum() + log_det.sum()).backward()
    assert x.grad is not None and all(p.grad is not None for p in flow.parameters())
    torch.autograd.gradcheck(lambda v: flow(v), (x[:2].detach().requires_grad_(),))


@pytest.mark.parametrize("make,match", [
    (lambda: Flow(1), "dim"),
    (lambda: Flow(4, n_layers=0), "n_layers"),
    (lambda: Flow(4)(torch.zeros(3, 5)), r"x must have shape \(n, 4\)"),
    (lambda: Flow(4).inverse(torch.zeros(4)), r"z must have shape \(n, 4\)"),
    (lambda: AffineCoupling(torch.ones(4, dtype=torch.bool)), "mask must keep some"),
    (lambda: AffineCoupling(torch.ones(4)), "bool"),
    (lambda: Flow(4, scale=0.0), "scale"),
])
def test_bad_input_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
