"""Two real gloo processes on CPU: global-batch estimators equal the single-process values.

Each case builds one global batch from a fixed seed, splits its rows over the two ranks (unequal
shares on purpose), evaluates the estimator with ``distributed=True`` on every rank, and
back-propagates. The value on every rank must equal the single-process value over the
concatenated batch, and each rank's gradient divided by the world size (DDP's averaging; see the
gradient convention in ``mvssl_core/dist.py``) must equal the matching rows of the single-process
gradient.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from mvssl_core import bounds, dist, entropy, losses

WORLD = 2
SPLIT = (5, 7)  # rows on rank 0 and rank 1: unequal on purpose
N = sum(SPLIT)
D = 6


def _batch(seed: int, n: int = N, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _probs(seed: int) -> torch.Tensor:
    return torch.softmax(_batch(seed, d=4) * 2, dim=1)


# name -> (inputs builder, function of the inputs and `distributed`)
CASES = {
    "kde_vmf_joe": (lambda: [_batch(0)], lambda z, distributed: entropy.kde_entropy(z, kappa=3.0, distributed=distributed)),
    "kde_vmf_plugin": (
        lambda: [_batch(1)],
        lambda z, distributed: entropy.kde_entropy(z, kappa=3.0, estimator="plugin", distributed=distributed),
    ),
    "kde_vmf_loo_chunked": (
        lambda: [_batch(2)],
        lambda z, distributed: entropy.kde_entropy(
            z, kappa=5.0, leave_one_out=True, chunk_size=3, distributed=distributed
        ),
    ),
    "kde_gaussian": (
        lambda: [_batch(3)],
        lambda z, distributed: entropy.kde_entropy(z, kernel="gaussian", bandwidth=1.5, distributed=distributed),
    ),
    "discrete_entropy": (lambda: [_probs(4)], lambda p, distributed: entropy.discrete_entropy(p, distributed=distributed)),
    "infonce": (
        lambda: [_batch(5), _batch(6)],
        lambda a, b, distributed: bounds.infonce_from_embeddings(a, b, temperature=0.5, distributed=distributed),
    ),
    "nt_xent": (
        lambda: [_batch(7), _batch(8)],
        lambda a, b, distributed: losses.nt_xent(a, b, temperature=0.3, distributed=distributed),
    ),
    "uniformity": (lambda: [_batch(9)], lambda z, distributed: bounds.uniformity(z, distributed=distributed)),
    "er_vmf": (
        lambda: [_batch(10), _batch(11)],
        lambda a, b, distributed: bounds.er_bound(a, b, kappa=4.0, distributed=distributed).bound,
    ),
    "er_gaussian_plugin_loo": (
        lambda: [_batch(12), _batch(13)],
        lambda a, b, distributed: bounds.er_bound(
            a, b, kernel="gaussian", bandwidth=2.0, estimator="plugin", leave_one_out=True, distributed=distributed
        ).bound,
    ),
    "er_discrete": (
        lambda: [_batch(14), _batch(15)],
        lambda a, b, distributed: bounds.er_bound_discrete(a, b, temperature=0.5, distributed=distributed).bound,
    ),
    "er_discrete_multicrop": (
        lambda: [_batch(16), _batch(17), _batch(18)],
        lambda a, b, c, distributed: bounds.er_bound_discrete_multicrop(
            [a, b, c], [a, b], temperature=0.5, target_temperature=0.2, distributed=distributed
        ).bound,
    ),
    "er_discrete_multicrop_prediction_entropy": (
        lambda: [_batch(19), _batch(20), _batch(21), _batch(22)],
        lambda a, b, c, t, distributed: bounds.er_bound_discrete_multicrop(
            [a, b, c], [t], temperature=0.5, entropy_branch="prediction", distributed=distributed
        ).bound,
    ),
}


def _rows(rank: int) -> slice:
    start = sum(SPLIT[:rank])
    return slice(start, start + SPLIT[rank])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {"world": dist.world_size(), "rank": dist.rank()}
        # gather with unequal shares, and its backward (sum over ranks, local slice)
        x = torch.arange(SPLIT[rank] * 2, dtype=torch.float64).reshape(-1, 2) + 100 * rank
        x.requires_grad_(True)
        g = dist.gather(x)
        (g * torch.arange(1, g.shape[0] + 1, dtype=torch.float64)[:, None]).sum().backward()
        results["gather"] = (g.detach(), x.grad)
        for name, (build, fn) in CASES.items():
            local = [t[_rows(rank)].clone().requires_grad_(True) for t in build()]
            value = fn(*local, distributed=True)
            value.backward()
            results[name] = (value.detach(), [t.grad for t in local])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def test_rank_helpers(two_process_results):
    assert [r["rank"] for r in two_process_results] == [0, 1]
    assert all(r["world"] == WORLD for r in two_process_results)


def test_gather_values_and_gradient(two_process_results):
    full = torch.cat(
        [torch.arange(SPLIT[r] * 2, dtype=torch.float64).reshape(-1, 2) + 100 * r for r in range(WORLD)]
    )
    weights = torch.arange(1, N + 1, dtype=torch.float64)[:, None].expand(N, 2)
    for rank, res in enumerate(two_process_results):
        gathered, grad = res["gather"]
        torch.testing.assert_close(gathered, full)
        # each rank's loss weights row i by (i+1); the sum over the two ranks' losses gives 2 (i+1)
        torch.testing.assert_close(grad, WORLD * weights[_rows(rank)])


@pytest.mark.parametrize("name", list(CASES))
def test_global_batch_equals_single_process(two_process_results, name):
    build, fn = CASES[name]
    full = [t.clone().requires_grad_(True) for t in build()]
    expected = fn(*full, distributed=False)
    expected.backward()
    for rank, res in enumerate(two_process_results):
        value, grads = res[name]
        torch.testing.assert_close(value, expected.detach(), rtol=1e-10, atol=1e-12)
        for g, t in zip(grads, full):
            torch.testing.assert_close(g / WORLD, t.grad[_rows(rank)], rtol=1e-8, atol=1e-12)


def test_identity_without_process_group():
    z = _batch(0)
    assert not dist.is_distributed()
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main_process()
    assert dist.gather(z) is z
    assert dist.all_reduce_sum(z) is z
    torch.testing.assert_close(dist.global_mean(z), z.mean(0))
    assert dist.local_slice(len(z)) == slice(0, len(z))
