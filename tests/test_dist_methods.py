"""Two real gloo processes on CPU: the methods' global-batch parts equal one process on the whole batch.

The harness of ``tests/test_dist.py``: one global batch from a fixed seed, its rows split
unequally over two ranks, every rank computing with ``distributed=True``.

1. Pure parts: Sinkhorn codes, the DINO centre update, and the DINO, SwAV, BYOL and DeepCluster
   losses (values on every rank; gradients divided by the world size, DDP's averaging, equal to the
   matching rows of the single-process gradient).
2. Whole methods: each of the 10 methods, built from the same seed on every rank with a
   batch-independent network (GroupNorm ConvNet, heads without BatchNorm), runs two steps on its
   share of the batch (between them, the DINO centre moves and DeepCluster clusters its bank).
   The second step's loss and metrics equal the single-process ones, and the mean over the ranks
   of the parameter gradients (what DistributedDataParallel applies) equals the single-process
   gradient.
3. Training under DistributedDataParallel (``broadcast_buffers=False``): three SGD steps of every
   method wrapped in DDP give the same parameters (teachers included) on both ranks as three
   single-process steps on the whole batch.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mvssl_core import dist, heads, losses
from mvssl_core.backbones import ConvNet
from mvssl_core.methods import METHODS, build_method

WORLD = 2
SPLIT = (5, 7)  # rows on rank 0 and rank 1: unequal on purpose
N = sum(SPLIT)
K = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(rank: int) -> slice:
    start = sum(SPLIT[:rank])
    return slice(start, start + SPLIT[rank])


def _batch(seed: int, d: int = K) -> torch.Tensor:
    return torch.randn(N, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cosines(seed: int) -> torch.Tensor:
    return F.normalize(_batch(seed, 5), dim=1) @ F.normalize(_batch(seed + 1, 5)[:K], dim=1).T


def _codes(seed: int) -> torch.Tensor:
    return torch.softmax(3 * _batch(seed), dim=1)


# name -> (inputs builder, function of the inputs and `distributed`); inputs in a list are differentiated
LOSS_CASES = {
    "dino_loss": (
        lambda: [_batch(0), _batch(1), _batch(2), _batch(3), _batch(4)],
        lambda s1, s2, s3, t1, t2, distributed: losses.dino_loss(
            [s1, s2, s3], [t1, t2], torch.linspace(-0.1, 0.1, K, dtype=torch.float64), 0.2, 0.05, distributed
        ),
    ),
    "swav_loss": (
        lambda: [_cosines(5), _cosines(7), _cosines(9)],
        lambda a, b, c, distributed: losses.swav_loss(
            [a, b, c],
            [losses.sinkhorn(a, distributed=distributed), losses.sinkhorn(b, distributed=distributed)],
            0.1,
            distributed,
        ),
    ),
    "byol_loss": (lambda: [_batch(11), _batch(12)], lambda p, z, distributed: losses.byol_loss(p, z, distributed)),
    "deepcluster_loss": (
        lambda: [_batch(13)],
        lambda s, distributed: losses.deepcluster_loss(
            [s], [_targets()[_rows(torch_dist.get_rank()) if distributed else slice(None)]], 0.1, distributed
        ),
    ),
}


def _targets() -> torch.Tensor:
    return torch.arange(N) % K


SMALL = {
    "simclr": dict(projector=heads.MLPSpec(16, 8, bn=False)),
    "byol": dict(projector=heads.MLPSpec(16, 8, bn=False), predictor=heads.MLPSpec(16, 8, bn=False)),
    "dino": dict(head=heads.DINOHeadSpec(hidden=16, bottleneck=8, out=12)),
    "swav": dict(projector=heads.MLPSpec(16, 8, bn=False), prototypes=heads.PrototypeSpec(5)),
    "deepcluster": dict(
        projector=heads.MLPSpec(16, 8, bn=False), prototypes=heads.PrototypeSpec(4, heads=2), dataset_size=N
    ),
}


def _method(name: str, distributed: bool):
    torch.manual_seed(0)
    backbone = ConvNet(widths=(4, 8), norm="group")
    return build_method(
        name, backbone, backbone.feature_dim, distributed=distributed, **SMALL[name.removesuffix("_er")]
    )


def _global_views(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    base = F.interpolate(torch.randn(N, 3, 4, 4, generator=g), size=12, mode="bilinear", align_corners=False)
    return [
        base + 0.1 * torch.randn(base.shape, generator=g),
        base.flip(-1) + 0.1 * torch.randn(base.shape, generator=g),
        base[:, :, 2:10, 2:10] + 0.1 * torch.randn(N, 3, 8, 8, generator=g),
    ]


def _run_method(name: str, rows: slice, distributed: bool, metrics: bool = True):
    """Two steps on the rows ``rows`` of the global batch; returns step 2's loss, metrics and gradients."""
    method = _method(name, distributed)
    indices = torch.arange(N)[rows]
    for step in range(2):
        method.start_epoch(step)
        method.zero_grad(set_to_none=True)
        views = [v[rows] for v in _global_views(step)]
        out = method(views, 0.05 + 0.1 * step, indices, metrics=metrics)
        out.loss.backward()
    grads = {
        k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in method.named_parameters()
        if p.requires_grad
    }
    return out.loss.detach(), out.metrics, grads


def _train_steps(name: str, rows: slice, distributed: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    """SGD steps of the method (wrapped in DDP when distributed); returns its state afterwards."""
    method = _method(name, distributed)
    model = DistributedDataParallel(method, broadcast_buffers=False) if distributed else method
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    indices = torch.arange(N)[rows]
    for step in range(steps):
        method.start_epoch(step)
        out = model([v[rows] for v in _global_views(step)], (step + 1) / (steps + 1), indices)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_optimizer_step((step + 1) / (steps + 1))
    return {k: v.detach().clone() for k, v in method.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {}
        scores = _cosines(20)[_rows(rank)]
        results["sinkhorn"] = losses.sinkhorn(scores, epsilon=0.05, n_iters=3, distributed=True)
        results["sinkhorn_long"] = losses.sinkhorn(scores, epsilon=0.1, n_iters=50, distributed=True)
        results["sinkhorn_wide"] = losses.sinkhorn(_wide_cosines()[_rows(rank)], epsilon=0.05, distributed=True)
        center = losses.DINOCenter(K, momentum=0.8)
        center.update_([_batch(21)[_rows(rank)], _batch(22)[_rows(rank)]], distributed=True)
        results["center"] = center.center.clone()
        for name, (build, fn) in LOSS_CASES.items():
            local = [t[_rows(rank)].clone().requires_grad_(True) for t in build()]
            value = fn(*local, distributed=True)
            grads = torch.autograd.grad(value, local, allow_unused=True)
            results[name] = (value.detach(), grads)
        for name in METHODS:
            results[f"method:{name}"] = _run_method(name, _rows(rank), distributed=True)
            results[f"quiet:{name}"] = _run_method(name, _rows(rank), distributed=True, metrics=False)
            results[f"ddp:{name}"] = _train_steps(name, _rows(rank), distributed=True)
        results["gather"] = {equal: _gather_equal_rows(rank, equal) for equal in (False, True)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


EQUAL = 4  # rows per rank of the equal-sizes gather


def _gather_equal_rows(rank: int, equal_sizes: bool):
    """dist.gather of EQUAL rows per rank: the gathered rows, this rank's gradient of a weighted sum of the
    global rows, and the number of collectives of the forward."""
    x = _batch(30)[rank * EQUAL : (rank + 1) * EQUAL].clone().requires_grad_(True)
    calls = []
    all_gather = torch_dist.all_gather

    def counted(*args, **kwargs):
        calls.append(1)
        return all_gather(*args, **kwargs)

    torch_dist.all_gather = counted
    try:
        out = dist.gather(x, equal_sizes=equal_sizes)
    finally:
        torch_dist.all_gather = all_gather
    (out * _batch(31)[: WORLD * EQUAL]).sum().backward()
    return out.detach(), x.grad, len(calls)


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def test_sinkhorn_global_batch(two_process_results):
    full = _cosines(20)
    expected = losses.sinkhorn(full, epsilon=0.05, n_iters=3)
    expected_long = losses.sinkhorn(full, epsilon=0.1, n_iters=50)
    for rank, res in enumerate(two_process_results):
        torch.testing.assert_close(res["sinkhorn"], expected[_rows(rank)], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["sinkhorn_long"], expected_long[_rows(rank)], rtol=1e-10, atol=1e-12)
    # the equipartition holds over the global batch, not per process
    codes = torch.cat([res["sinkhorn_long"] for res in two_process_results])
    torch.testing.assert_close(codes.sum(0) / N, torch.full((K,), 1 / K, dtype=codes.dtype), rtol=0, atol=1e-3)


def _wide_cosines() -> torch.Tensor:
    """float32 cosines with one row of rank 1 far below the rest: only rank 1 sees the wide range."""
    scores = _cosines(23).float()
    scores[N - 1] = scores.max() - 110 * 0.05
    return scores


def test_sinkhorn_chooses_its_domain_from_the_global_batch(two_process_results):
    """Rank 0's rows alone would take sinkhorn's linear domain, rank 1's the log domain: the choice is made
    on the global range, so both take the log domain and the codes are the single-process ones."""
    full = _wide_cosines()
    span = (full.max() - full.min()) / 0.05
    assert span > 100 and (full[_rows(0)].max() - full[_rows(0)].min()) / 0.05 < 50
    expected = losses.sinkhorn(full, epsilon=0.05)
    assert torch.isfinite(expected).all()
    for rank, res in enumerate(two_process_results):
        torch.testing.assert_close(res["sinkhorn_wide"], expected[_rows(rank)], rtol=1e-5, atol=1e-7)


def test_dino_center_global_batch(two_process_results):
    center = losses.DINOCenter(K, momentum=0.8)
    center.update_([_batch(21), _batch(22)])
    for res in two_process_results:
        torch.testing.assert_close(res["center"], center.center, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_losses_global_batch(two_process_results, name):
    build, fn = LOSS_CASES[name]
    full = [t.clone().requires_grad_(True) for t in build()]
    expected = fn(*full, distributed=False)
    expected_grads = torch.autograd.grad(expected, full, allow_unused=True)
    for rank, res in enumerate(two_process_results):
        value, grads = res[name]
        torch.testing.assert_close(value, expected.detach(), rtol=1e-10, atol=1e-12)
        for g, ge in zip(grads, expected_grads):
            assert (g is None) == (ge is None)
            if g is not None:
                torch.testing.assert_close(g / WORLD, ge[_rows(rank)], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_global_batch(two_process_results, name):
    loss, metrics, grads = _run_method(name, slice(None), distributed=False)
    per_rank = [res[f"method:{name}"] for res in two_process_results]
    for r_loss, r_metrics, _ in per_rank:
        torch.testing.assert_close(r_loss, loss, rtol=1e-4, atol=1e-5)
        assert set(r_metrics) == set(metrics)
        for key, value in metrics.items():
            assert r_metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    assert loss.item() != 0.0
    for key, g in grads.items():
        mean = sum(r[2][key] for r in per_rank) / WORLD  # DistributedDataParallel's average
        torch.testing.assert_close(mean, g, rtol=1e-3, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_ddp_training_equals_single_process(two_process_results, name):
    expected = _train_steps(name, slice(None), distributed=False)
    start = _method(name, False).state_dict()
    moved = [k for k, v in expected.items() if not torch.equal(v, start[k])]
    assert any(k.startswith("backbone.") for k in moved), "the backbone did not train"
    for res in two_process_results:
        params = res[f"ddp:{name}"]
        assert set(params) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(params[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


# ------------------------------------------------------------------------------------------------
# DeepCluster's k-means: on rank 0, broadcast to the others


def _bank(method, perturb: bool) -> None:
    """A full memory bank, the same on every rank unless ``perturb`` (a replica whose bank drifted)."""
    g = torch.Generator().manual_seed(7)
    bank = F.normalize(torch.randn(method.memory.shape, generator=g), dim=-1)
    if perturb:
        bank = F.normalize(bank + 0.3 * torch.randn(bank.shape, generator=torch.Generator().manual_seed(8)), dim=-1)
    method.memory.copy_(bank)
    method.seen.fill_(True)


def _clustered(method) -> dict:
    return {"prototypes": [h.weight.detach().clone() for h in method.prototypes.heads],
            "assignments": method.assignments.clone()}


def _kmeans_worker(rank: int, init_file: str, out_dir: str) -> None:
    from mvssl_core.methods import deepcluster as deepcluster_module

    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    kmeans, calls = deepcluster_module.spherical_kmeans, []
    try:
        method = _method("deepcluster", distributed=True)
        _bank(method, perturb=rank == 1)
        torch.manual_seed(1000 + rank)  # per-rank RNG states differ too
        deepcluster_module.spherical_kmeans = lambda *a, **k: calls.append(1) or kmeans(*a, **k)
        method.start_epoch(3)
        torch.save({**_clustered(method), "calls": len(calls)}, os.path.join(out_dir, f"kmeans{rank}.pt"))
    finally:
        deepcluster_module.spherical_kmeans = kmeans
        torch_dist.destroy_process_group()


def test_kmeans_runs_on_rank_0_and_every_rank_holds_its_result():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_kmeans_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        ranks = [torch.load(os.path.join(tmp, f"kmeans{r}.pt")) for r in range(WORLD)]
    single = _method("deepcluster", distributed=False)
    _bank(single, perturb=False)
    single.start_epoch(3)
    expected = _clustered(single)
    # one process: what spherical_kmeans gives on the bank, with the seed of (seed, epoch, head) as before
    heads_ = single.prototypes.heads
    for h, head in enumerate(heads_):
        g = torch.Generator().manual_seed(single.seed * 1_000_003 + 3 * len(heads_) + h)
        centroids, assignment = losses.spherical_kmeans(single.memory[h % single.n_global], 4, single.kmeans_iters,
                                                        generator=g)
        assert torch.equal(expected["prototypes"][h], centroids.float())
        assert torch.equal(expected["assignments"][h], assignment)
    assert (expected["assignments"] >= 0).all()
    # the perturbed replica would cluster to other centroids on its own: the broadcast is what aligns them
    drifted = _method("deepcluster", distributed=False)
    _bank(drifted, perturb=True)
    drifted.start_epoch(3)
    assert not torch.equal(_clustered(drifted)["prototypes"][0], expected["prototypes"][0])
    assert [r["calls"] for r in ranks] == [len(heads_), 0]  # k-means on rank 0 only
    for r in ranks:
        for got, want in zip(r["prototypes"], expected["prototypes"]):
            assert torch.equal(got, want)
        assert torch.equal(r["assignments"], expected["assignments"])


def test_gather_equal_sizes_equals_the_general_path(two_process_results):
    """``equal_sizes=True`` skips the all-gather of the sizes: the same rows and gradients, one collective, not 2."""
    x = _batch(30)[: WORLD * EQUAL]
    weights = _batch(31)[: WORLD * EQUAL]
    for rank, res in enumerate(two_process_results):
        general, general_grad, general_calls = res["gather"][False]
        fast, fast_grad, fast_calls = res["gather"][True]
        assert (general_calls, fast_calls) == (2, 1)
        assert torch.equal(fast, general) and torch.equal(fast, x)
        # the backward sums the identical weights of the 2 ranks and keeps this rank's rows
        assert torch.equal(fast_grad, general_grad)
        torch.testing.assert_close(fast_grad, WORLD * weights[rank * EQUAL : (rank + 1) * EQUAL])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_without_metrics_give_the_same_loss_and_gradients(two_process_results, name):
    """``metrics=False`` (a step the trainer does not log), 2 processes: no metrics, the same loss and
    gradients bit for bit."""
    for res in two_process_results:
        loss, metrics, grads = res[f"method:{name}"]
        q_loss, q_metrics, q_grads = res[f"quiet:{name}"]
        assert q_metrics == {} and len(metrics) >= 5
        assert torch.equal(q_loss, loss)
        assert grads.keys() == q_grads.keys()
        for key in grads:
            assert torch.equal(q_grads[key], grads[key]), key
