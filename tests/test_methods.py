"""Methods, heads and the EMA teacher: every method trains on CPU and reports its ER terms.

Each of the 10 registered methods runs a few SGD steps with a tiny ConvNet on small structured
images (two augmented views of random low-frequency patterns, plus local crops where the method
uses multi-crop): the loss is finite, every ER metric is reported and finite, the trained
parameters change, and the EMA teachers move exactly as ``xi <- m xi + (1 - m) theta`` with m
from the cosine schedule. Heads are checked against the papers' sizes, the EMA against a hand
computation.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import ema, heads
from mvssl_core.backbones import ConvNet
from mvssl_core.methods import METHODS, StepOutput, build_method

N = 16  # batch
SMALL = {
    "simclr": dict(projector=heads.MLPSpec(32, 16)),
    "byol": dict(projector=heads.MLPSpec(32, 16), predictor=heads.MLPSpec(32, 16)),
    "dino": dict(head=heads.DINOHeadSpec(hidden=32, bottleneck=16, out=64)),
    "swav": dict(projector=heads.MLPSpec(32, 16), prototypes=heads.PrototypeSpec(10), queue_length=32),
    "deepcluster": dict(
        projector=heads.MLPSpec(32, 16), prototypes=heads.PrototypeSpec(8, heads=2), dataset_size=2 * N
    ),
}
MULTICROP = {"dino", "swav", "deepcluster"}
ALWAYS = {"loss", "entropy", "reconstruction", "collapse_std", "effective_rank"}
DISCRETE = {"discrete_entropy", "discrete_reconstruction"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: one intra-op thread is several times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _base(family: str) -> str:
    return family.removesuffix("_er")


def _images(n: int, seed: int) -> torch.Tensor:
    """Random low-frequency colour patterns, 16 x 16."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)


def _views(images: torch.Tensor, seed: int, n_local: int = 0) -> list[torch.Tensor]:
    """Two global views (flip, brightness, noise) and ``n_local`` 8 x 8 crops."""
    g = torch.Generator().manual_seed(seed)

    def augment(x):
        flip = torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5
        x = torch.where(flip, x.flip(-1), x)
        return x * (0.8 + 0.4 * torch.rand(x.shape[0], 1, 1, 1, generator=g)) + 0.1 * torch.randn(x.shape, generator=g)

    views = [augment(images), augment(images)]
    for _ in range(n_local):
        i, j = torch.randint(0, 9, (2,), generator=g).tolist()
        views.append(augment(images[:, :, i : i + 8, j : j + 8]))
    return views


def _build(name: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    backbone = ConvNet(widths=(8, 16))
    return build_method(name, backbone, backbone.feature_dim, **{**SMALL[_base(name)], **extra})


def _trainable(method: nn.Module) -> list[nn.Parameter]:
    return [p for p in method.parameters() if p.requires_grad]


def _teacher_pairs(method: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    if isinstance(method, METHODS["byol"]):
        return [(method.teacher["backbone"], method.backbone), (method.teacher["projector"], method.projector)]
    return [(method.teacher["backbone"], method.backbone), (method.teacher["head"], method.head)]


def _train(method: nn.Module, steps: int, lr: float = 0.05, check_ema: bool = False, total: int | None = None,
           metrics: bool = True):
    """SGD steps; returns the StepOutputs. With ``check_ema``, verifies every EMA update by hand."""
    opt = torch.optim.SGD(_trainable(method), lr=lr, momentum=0.9)
    total = total or steps
    outs = []
    images = _images(N, seed=123)
    for step in range(steps):
        method.start_epoch(step * N // (2 * N))  # the bank of 2N samples is one "epoch" of 2 steps
        idx = (torch.arange(N) + N * step) % (2 * N)
        n_local = 2 if _base(type(method).__name__.lower()) in MULTICROP else 0
        views = _views(images, seed=step, n_local=n_local)
        out = method(views, step / total, idx, metrics=metrics)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        progress = (step + 1) / total
        if check_ema:
            before = [[t.detach().clone() for t in teacher.parameters()] for teacher, _ in _teacher_pairs(method)]
        method.after_optimizer_step(progress)
        if check_ema:
            m = method.teacher.momentum(progress)
            assert m == pytest.approx(
                ema.cosine_momentum(progress, method.teacher.base_momentum, method.teacher.final_momentum)
            )
            for (teacher, student), old in zip(_teacher_pairs(method), before):
                for t, s, o in zip(teacher.parameters(), student.parameters(), old):
                    torch.testing.assert_close(t, m * o + (1 - m) * s.detach(), rtol=1e-6, atol=1e-7)
                for tb, sb in zip(teacher.buffers(), student.buffers()):
                    torch.testing.assert_close(tb, sb)
        outs.append(out)
    return outs


# ----------------------------------------------------------------------------- registry and training


def test_registry_holds_the_ten_methods():
    assert sorted(METHODS) == sorted(
        f"{m}{s}" for m in ("simclr", "byol", "dino", "swav", "deepcluster") for s in ("", "_er")
    )
    with pytest.raises(ValueError, match="name"):
        build_method("mocov3", nn.Identity(), 4)
    with pytest.raises(ValueError, match="by name"):
        build_method("simclr", nn.Identity(), 4, er=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_and_reports_er_terms(name):
    method = _build(name)
    assert method.er == name.endswith("_er")
    start = {k: v.detach().clone() for k, v in method.backbone.state_dict().items() if v.is_floating_point()}
    has_teacher = _base(name) in ("byol", "dino")
    teacher_start = [p.clone() for p in method.teacher.parameters()] if has_teacher else []
    steps = 4
    outs = _train(method, steps, check_ema=has_teacher, total=10)
    for out in outs:
        assert isinstance(out, StepOutput)
        assert torch.isfinite(out.loss) and out.loss.requires_grad
        expected = set(ALWAYS)
        if _base(name) in MULTICROP:
            expected |= DISCRETE
        if name.endswith("_er"):
            expected |= {"loss_entropy", "loss_reconstruction"}
        assert expected <= set(out.metrics), f"missing {expected - set(out.metrics)}"
        assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())
        assert out.metrics["loss"] == pytest.approx(out.loss.item())
        if name.endswith("_er"):  # the loss is minus the bound it reports
            assert out.loss.item() == pytest.approx(
                -(out.metrics["loss_entropy"] + out.metrics["loss_reconstruction"]), rel=1e-5, abs=1e-5
            )
    changed = [k for k, v in method.backbone.state_dict().items() if k in start and not torch.equal(v, start[k])]
    assert any("weight" in k for k in changed), "the backbone's weights did not change"
    if has_teacher:  # the teacher moved, and stays a frozen copy
        assert any(not torch.equal(a, b) for a, b in zip(teacher_start, method.teacher.parameters()))
        assert not any(p.requires_grad for p in method.teacher.parameters())
    # metrics are bounded as the estimators say
    d = 16
    last = outs[-1].metrics
    assert 0.0 <= last["collapse_std"] <= 1.0
    assert 1.0 <= last["effective_rank"] <= d + 1e-6
    if "discrete_entropy" in last:
        assert 0.0 <= last["discrete_entropy"] <= math.log(64) + 1e-6


@pytest.mark.parametrize("name", sorted(METHODS))
def test_steps_without_metrics_train_bit_for_bit_alike(name):
    """``metrics=False`` (the trainer's steps that write no log line): no metrics, and the same losses,
    parameters, buffers (EMA teacher, centre, queue, bank) as the steps with metrics, bit for bit."""
    loud, quiet = _build(name), _build(name)
    loud_outs, quiet_outs = _train(loud, 4, total=10), _train(quiet, 4, total=10, metrics=False)
    for a, b in zip(loud_outs, quiet_outs):
        assert b.metrics == {} and len(a.metrics) >= len(ALWAYS)
        assert torch.equal(a.loss.detach(), b.loss.detach())
    expected = loud.state_dict()
    assert quiet.state_dict().keys() == expected.keys()
    for key, value in quiet.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", sorted(SMALL))
def test_metrics_flag_is_not_coerced(name):
    method = _build(name)
    views = _views(_images(N, seed=1), seed=0, n_local=2 if name in MULTICROP else 0)
    with pytest.raises(TypeError, match="^metrics must be True or False, got 'no'"):
        method(views, 0.0, torch.arange(N), metrics="no")


def _effective_rank_by_svd(z: torch.Tensor) -> torch.Tensor:
    """The effective rank as projection_metrics computed it before issue 13: svdvals of the (N, d) batch."""
    s = torch.linalg.svdvals(z)
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def _low_rank(n: int, d: int, rank: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d, generator=gen, dtype=torch.float64)
    return F.normalize(torch.randn(n, rank, generator=gen, dtype=torch.float64) @ basis, dim=1).to(dtype)


@pytest.mark.parametrize("n,d,rank", [(64, 16, 16), (64, 16, 3), (8, 32, 8), (8, 32, 2), (256, 128, 128),
                                      (256, 128, 10), (50, 7, 1)])
def test_effective_rank_from_the_gram_equals_the_svd(n, d, rank):
    """Issue 13 item 7: eigvalsh of the small Gram matrix gives the singular values' effective rank, to
    float64 rounding (1e-10) and, in float32, as close as float32's own SVD is to the exact value."""
    from mvssl_core.methods.step import _effective_rank

    z64 = _low_rank(n, d, rank, seed=n + d + rank, dtype=torch.float64)
    exact = _effective_rank_by_svd(z64)
    assert 1.0 - 1e-9 <= float(exact) <= rank + 1e-9
    value = _effective_rank(z64)
    assert value.dtype == torch.float64 and value.shape == ()
    torch.testing.assert_close(value, exact, rtol=1e-10, atol=0.0)
    z32 = z64.float()
    svd32 = _effective_rank_by_svd(z32)
    value32 = _effective_rank(z32)
    assert value32.dtype == torch.float32
    assert abs(float(value32) - float(exact)) <= max(2 * abs(float(svd32) - float(exact)), 1e-5 * float(exact))
    zero = torch.zeros(n, d)
    assert float(_effective_rank(zero)) == float(_effective_rank_by_svd(zero)) == 1.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_runs_under_bfloat16_autocast(name):
    method = _build(name)
    method.start_epoch(0)
    n_local = 2 if _base(name) in MULTICROP else 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(_views(_images(N, 5), seed=0, n_local=n_local), 0.3, indices=torch.arange(N))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(math.isfinite(v) for v in out.metrics.values())


def test_methods_reject_bad_views():
    method = _build("simclr")
    with pytest.raises(TypeError, match="views"):
        method(torch.randn(2, N, 3, 16, 16), 0.0)
    with pytest.raises(ValueError, match="at least 2 views"):
        method([torch.randn(N, 3, 16, 16)], 0.0)
    with pytest.raises(ValueError, match="same batch size"):
        method([torch.randn(N, 3, 16, 16), torch.randn(N - 1, 3, 16, 16)], 0.0)
    with pytest.raises(ValueError, match="dataset_size"):
        _build("deepcluster", dataset_size=4)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_method_refuses_progress_outside_0_1(name):
    # progress is the fraction of training done: four methods ran forward(progress=2.0) off their
    # schedules (DINO's teacher temperature refused it, with a message about teacher_temperature)
    method = _build(name)
    n_local = 2 if name in MULTICROP else 0
    views = _views(_images(N, 5), seed=0, n_local=n_local)
    for bad, error in [(2.0, ValueError), (-0.5, ValueError), (float("nan"), ValueError), ("0.5", TypeError)]:
        with pytest.raises(error, match=r"^progress must be a (finite )?number in \[0, 1\], got "):
            method(views, bad, indices=torch.arange(N))
        with pytest.raises(error, match=r"^progress must be a (finite )?number in \[0, 1\]"):
            method.after_optimizer_step(bad)
    out = method(views, 1, indices=torch.arange(N))  # an int 0 or 1 is a number in [0, 1]
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_method_flags_and_fractions_are_not_coerced(name):
    # bool("no") is True: distributed="no" built a method that gathered over processes
    with pytest.raises(TypeError, match="^distributed must be True or False, got 'no'"):
        _build(name, distributed="no")
    fractions = {"byol": "base_momentum", "dino": "freeze_last_layer", "swav": "queue_start"}
    if name in fractions:
        with pytest.raises(TypeError, match=f"^{fractions[name]} must be a number in"):
            _build(name, **{fractions[name]: "0.5"})
        with pytest.raises(ValueError, match=f"^{fractions[name]} must be a finite number in"):
            _build(name, **{fractions[name]: 1.5})


def test_deepcluster_clusters_each_epoch_and_targets_its_assignments():
    method = _build("deepcluster")
    assert not method.clustered
    outs = _train(method, 2)  # epoch 0 fills the bank of 2N samples: no targets, loss 0
    assert all(o.loss.item() == 0.0 for o in outs)
    assert bool(method.seen.all()) and not method.clustered
    method.start_epoch(1)
    assert method.clustered
    for h, head in enumerate(method.prototypes.heads):  # prototypes = centroids of head h's crop bank
        bank = F.normalize(method.memory[h % 2], dim=1)
        torch.testing.assert_close(method.assignments[h], (bank @ head.weight.T).argmax(dim=1))
    before = method.assignments.clone()
    outs = _train(method, 2)
    assert all(o.loss.item() > 0 for o in outs)
    method.start_epoch(2)
    assert method.assignments.shape == before.shape
    with pytest.raises(ValueError, match="indices"):
        method(_views(_images(N, 0), 0), 0.5)


def test_swav_queue_fills_then_joins_the_codes():
    method = _build("swav", queue_length=2 * N)
    assert method.queue is not None and not method.queue.full
    _train(method, 2)
    assert method.queue.full
    out = _train(method, 1)[0]  # a step with the queue in the Sinkhorn problem
    assert math.isfinite(out.loss.item())


def test_dino_teacher_temperature_and_centre_follow_their_schedules():
    method = _build("dino")
    assert method.centering and not _build("dino_er").centering
    c0 = method.center.center.clone()
    _train(method, 1)
    assert not torch.equal(c0, method.center.center)
    er = _build("dino_er")
    _train(er, 1)
    assert torch.equal(er.center.center, torch.zeros_like(er.center.center))


def test_byol_er_entropy_branch_is_a_parameter():
    online = _build("byol_er")
    target = _build("byol_er", entropy_branch="target")
    o, t = _train(online, 1)[0], _train(target, 1)[0]
    assert o.metrics["loss_reconstruction"] == pytest.approx(t.metrics["loss_reconstruction"], rel=1e-5)
    with pytest.raises(ValueError, match="entropy_branch"):
        _build("byol_er", entropy_branch="both")


# ----------------------------------------------------------------------------- heads


def test_paper_head_sizes():
    assert (heads.SIMCLR_PROJECTOR.hidden, heads.SIMCLR_PROJECTOR.out, heads.SIMCLR_PROJECTOR.layers) == (2048, 128, 2)
    assert (heads.BYOL_PROJECTOR.hidden, heads.BYOL_PROJECTOR.out) == (4096, 256)
    assert heads.BYOL_PREDICTOR == heads.BYOL_PROJECTOR
    d = heads.DINO_HEAD
    assert (d.hidden, d.bottleneck, d.out, d.layers, d.norm_last_layer) == (2048, 256, 65536, 3, True)
    assert (heads.SWAV_PROJECTOR.hidden, heads.SWAV_PROJECTOR.out, heads.SWAV_PROTOTYPES.n_prototypes) == (
        2048,
        128,
        3000,
    )
    assert heads.DEEPCLUSTER_PROJECTOR == heads.SWAV_PROJECTOR
    assert (heads.DEEPCLUSTER_PROTOTYPES.n_prototypes, heads.DEEPCLUSTER_PROTOTYPES.heads) == (3000, 3)


def test_build_mlp_layers():
    mlp = heads.build_mlp(512, heads.BYOL_PROJECTOR)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[3].out_features) == (512, 4096, 256)
    assert mlp(torch.randn(4, 512)).shape == (4, 256)
    spec = heads.as_spec(
        {"hidden": 8, "out": 3, "layers": 3, "bn": False, "last_bn": True, "activation": "gelu"}, heads.MLPSpec
    )
    kinds = [type(m) for m in heads.build_mlp(5, spec)]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear, nn.BatchNorm1d]
    assert [type(m) for m in heads.build_mlp(5, replace(spec, layers=1, last_bn=False))] == [nn.Linear]
    with pytest.raises(ValueError, match="unknown fields"):
        heads.as_spec({"width": 3}, heads.MLPSpec)
    with pytest.raises(ValueError, match="activation"):
        heads.MLPSpec(4, 2, activation="tanh")


def test_dino_head_is_weight_normalised():
    head = heads.DINOHead(16, heads.DINOHeadSpec(hidden=32, bottleneck=8, out=20))
    z, logits = head(torch.randn(5, 16))
    assert z.shape == (5, 8) and logits.shape == (5, 20)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    unit = F.normalize(head.last_layer.weight, dim=1)
    torch.testing.assert_close(logits, z @ unit.T)  # gain fixed at 1: dot products with unit vectors
    assert logits.abs().max() <= 1 + 1e-6
    assert not head.last_layer.gain.requires_grad
    logits.sum().backward()
    frozen = heads.DINOHead(16, heads.DINOHeadSpec(hidden=32, bottleneck=8, out=20))
    frozen(torch.randn(5, 16), freeze_last_layer=True)[1].sum().backward()
    assert torch.count_nonzero(frozen.last_layer.weight.grad) == 0
    assert torch.count_nonzero(frozen.mlp[0].weight.grad) > 0


def test_prototypes_normalise_in_place():
    protos = heads.Prototypes(6, heads.PrototypeSpec(n_prototypes=4, heads=2))
    with torch.no_grad():
        protos.heads[0].weight.mul_(3.0)
    protos.normalize_()
    for head in protos.heads:
        torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(4))
    scores = protos(F.normalize(torch.randn(3, 6), dim=1))
    assert len(scores) == 2 and scores[0].shape == (3, 4) and scores[0].abs().max() <= 1 + 1e-6


# ----------------------------------------------------------------------------- EMA


def test_cosine_momentum_values():
    assert ema.cosine_momentum(0.0, 0.996) == pytest.approx(0.996)
    assert ema.cosine_momentum(1.0, 0.996) == pytest.approx(1.0)
    assert ema.cosine_momentum(0.5, 0.996) == pytest.approx(0.998)
    for k, big_k in [(1, 10), (3, 7), (250, 1000)]:  # BYOL: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / big_k) + 1) / 2
        assert ema.cosine_momentum(k / big_k, 0.99) == pytest.approx(expected, rel=1e-15)
    assert ema.cosine_momentum(0.3, base=0.0, final=0.0) == 0.0
    with pytest.raises(ValueError, match="progress"):
        ema.cosine_momentum(-0.1)
    with pytest.raises(ValueError, match="base"):
        ema.cosine_momentum(0.1, base=1.5)


def test_ema_update_by_hand():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = ema.frozen_copy(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student(torch.randn(8, 3))  # moves the running statistics
    old = [p.clone() for p in teacher.parameters()]
    ema.ema_update_(teacher, student, 0.75)
    for t, s, o in zip(teacher.parameters(), student.parameters(), old):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s.detach())
        torch.testing.assert_close(t, o + 0.25)  # the student moved by exactly 1
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)
    assert int(teacher[1].num_batches_tracked) == 1
    ema.ema_update_(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s.detach())
    with pytest.raises(ValueError, match="momentum"):
        ema.ema_update_(teacher, student, 1.5)
    with pytest.raises(ValueError, match="same parameters"):
        ema.ema_update_(teacher, nn.Linear(3, 2), 0.5)


@pytest.mark.parametrize("name, base", [("byol", 0.9), ("byol_er", 0.99), ("dino", 0.9), ("dino_er", 0.996)])
def test_ema_teacher_after_n_steps_is_the_formula_bit_for_bit(name, base):
    """Issue 13: BYOL's and DINO's one EMA teacher. After each of K real SGD steps, every teacher parameter
    is ``xi <- m xi + (1 - m) theta`` with ``m = 1 - (1 - m0)(cos(pi k / K) + 1) / 2`` at k = step + 1 (BYOL's
    tau, Grill et al. Section 3.2), written here with plain tensor ops (``mul_``, then ``add_`` with alpha,
    as the removed per-method code did through ``torch._foreach_*``): equal bit for bit; buffers copied."""
    method = _build(name, base_momentum=base)
    pairs = _teacher_pairs(method)
    reference = [[t.detach().clone() for t in teacher.parameters()] for teacher, _ in pairs]
    opt = torch.optim.SGD(_trainable(method), lr=0.05, momentum=0.9)
    images, big_k = _images(N, seed=7), 5
    n_local = 2 if _base(name) in MULTICROP else 0
    for step in range(big_k):
        out = method(_views(images, seed=step, n_local=n_local), step / big_k)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        k = step + 1
        m = 1 - (1 - base) * (math.cos(math.pi * k / big_k) + 1) / 2
        for ref, (_, student) in zip(reference, pairs):
            for r, s in zip(ref, student.parameters()):
                literal = m * r + (1 - m) * s.detach()
                r.mul_(m).add_(s.detach(), alpha=1 - m)
                torch.testing.assert_close(r, literal, rtol=1e-6, atol=1e-7)  # the formula, up to fma rounding
        method.after_optimizer_step(k / big_k)
        for ref, (teacher, student) in zip(reference, pairs):
            for r, t in zip(ref, teacher.parameters()):
                assert torch.equal(t, r)
            for tb, sb in zip(teacher.buffers(), student.buffers()):
                assert torch.equal(tb, sb)
    assert method.teacher.momentum(1.0) == 1.0 and method.teacher.momentum(0.0) == pytest.approx(base, abs=1e-15)
    moved = [not torch.equal(t, s) for teacher, student in pairs
             for t, s in zip(teacher.parameters(), student.parameters())]
    assert any(moved), "the teacher equals the student: the EMA did not average"


def _old_layout_teacher(method: nn.Module) -> nn.ModuleDict:
    """The teacher as BYOL and DINO built it before issue 13: a plain ModuleDict of frozen copies."""
    second = "projector" if isinstance(method, METHODS["byol"]) else "head"
    return nn.ModuleDict(
        {"backbone": ema.frozen_copy(method.backbone), second: ema.frozen_copy(getattr(method, second))}
    )


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_ema_teacher_keeps_the_checkpoint_keys_and_loads_an_old_checkpoint(name):
    """A checkpoint written before the EMATeacher (teacher = nn.ModuleDict) loads strictly, values and all."""
    old, new = _build(name, seed=0), _build(name, seed=1)
    _train(old, 2, total=4)
    old_teacher = _old_layout_teacher(old)
    old_teacher.load_state_dict(old.teacher.state_dict())  # the trained teacher, in the old layout
    old_state = {k: v for k, v in old.state_dict().items() if not k.startswith("teacher.")}
    old_state.update({f"teacher.{k}": v for k, v in old_teacher.state_dict().items()})
    assert list(new.state_dict()) == list(old.state_dict())
    assert sorted(old_state) == sorted(new.state_dict())
    new.load_state_dict(old_state, strict=True)
    for key, value in old_state.items():
        assert torch.equal(new.state_dict()[key], value), key
    assert not any(p.requires_grad for p in new.teacher.parameters())


def test_ema_teacher_by_hand_and_its_errors():
    torch.manual_seed(0)
    net, head = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2)
    teacher = ema.EMATeacher({"net": net, "head": head}, base_momentum=0.5, final_momentum=1.0)
    keys = [f"net.{k}" for k in net.state_dict()] + [f"head.{k}" for k in head.state_dict()]
    assert list(teacher.state_dict()) == keys
    assert not any(p.requires_grad for p in teacher.parameters()) and all(p.requires_grad for p in net.parameters())
    assert teacher.momentum(0.5) == pytest.approx(0.75, abs=1e-15)
    with torch.no_grad():
        for p in [*net.parameters(), *head.parameters()]:
            p.add_(1.0)
    net(torch.randn(8, 3))  # moves the running statistics
    old = [p.clone() for p in teacher.parameters()]
    assert teacher.update_({"head": head, "net": net}, 0.5) == pytest.approx(0.75, abs=1e-15)  # any order of names
    for t, o in zip(teacher.parameters(), old):
        torch.testing.assert_close(t, o + 0.25)  # each student moved by exactly 1
    assert torch.equal(teacher["net"][1].running_mean, net[1].running_mean)
    frozen = [p.clone() for p in teacher.parameters()]
    for bad, error, match in [
        ({"net": net}, ValueError, r"^students must name the teacher's modules \['head', 'net'\], got \['net'\]"),
        ([net, head], ValueError, r"^students must name the teacher's modules .*got list"),
    ]:
        with pytest.raises(error, match=match):
            teacher.update_(bad, 0.5)
    with pytest.raises(ValueError, match=r"^progress must be a finite number in \[0, 1\], got 1.5"):
        teacher.update_({"net": net, "head": head}, 1.5)
    assert all(torch.equal(a, b) for a, b in zip(frozen, teacher.parameters()))  # nothing moved on an error
    with pytest.raises(TypeError, match=r"^students must be a non-empty dict"):
        ema.EMATeacher({})
    with pytest.raises(TypeError, match=r"^students\['net'\] must be an nn.Module, got str"):
        ema.EMATeacher({"net": "model"})
    with pytest.raises(ValueError, match=r"^base_momentum must be a finite number in \[0, 1\]"):
        ema.EMATeacher({"net": net}, base_momentum=1.5)
    with pytest.raises(TypeError, match=r"^final_momentum must be a number in \[0, 1\]"):
        ema.EMATeacher({"net": net}, final_momentum="1")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_forward_is_the_only_step_entry_point(name):
    """Issue 13: no ``training_step`` alias beside ``forward``; the EMA schedule lives in the teacher."""
    method = _build(name)
    assert not hasattr(method, "training_step")
    assert not hasattr(method, "momentum") and not hasattr(method, "base_momentum")


# ----------------------------------------------------------------------------- collapse: the paper's mechanism


def _run_small(method: nn.Module, steps: int, n_local: int = 0, lr: float = 0.05) -> list[dict[str, float]]:
    """SGD (momentum 0.9, weight decay 1e-4) on batches of 32 from a pool of 64 structured images."""
    opt = torch.optim.SGD(_trainable(method), lr=lr, momentum=0.9, weight_decay=1e-4)
    images = _images(64, seed=1)
    history = []
    for step in range(steps):
        idx = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:32]
        out = method(_views(images[idx], seed=step, n_local=n_local), step / steps)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_optimizer_step((step + 1) / steps)
        history.append(out.metrics)
    return history


def _tail_mean(history: list[dict[str, float]], key: str, last: int = 10) -> float:
    return sum(h[key] for h in history[-last:]) / last


@pytest.mark.slow
def test_byol_without_ema_and_predictor_collapses():
    """Stop-gradient alone (target = online network, no predictor) collapses; EMA + predictor do not.

    The KDE entropy of the projections (vMF, kappa 10, d = 16, batch 32) lies between
    H_min = -log C_d(kappa) - kappa (all projections equal) and about log 32 + H_min.
    """
    from mvssl_core.special import vmf_log_normalizer

    d, kappa = 16, 10.0
    h_min = float(-vmf_log_normalizer(d, torch.tensor(kappa, dtype=torch.float64)) - kappa)
    healthy = _run_small(_build("byol", base_momentum=0.99), 150)
    ablated = _run_small(_build("byol", predictor=None, base_momentum=0.0, final_momentum=0.0), 150)
    h_healthy, h_ablated = _tail_mean(healthy, "entropy"), _tail_mean(ablated, "entropy")
    assert h_ablated - h_min < 0.3, (h_ablated, h_min)  # collapsed: entropy near its minimum
    assert _tail_mean(ablated, "collapse_std") < 0.05
    assert h_healthy - h_min > 1.5, (h_healthy, h_min)  # far from it with EMA and predictor
    assert _tail_mean(healthy, "collapse_std") > 0.1


@pytest.mark.slow
def test_dino_without_centring_collapses():
    """Without centring, the teacher's batch-mean assignment collapses to one of K = 64 outputs
    (discrete entropy H(W2) -> 0); with it, H(W2) stays high while each sample's assignment stays
    sharper than uniform (no uniform collapse either). Teacher momentum 0.9 so the toy run is short."""
    spec = heads.DINOHeadSpec(hidden=32, bottleneck=16, out=64, bn=True)
    log_k = math.log(64)
    runs = {}
    for centering in (True, False):
        method = _build("dino", head=spec, base_momentum=0.9, centering=centering)
        history = _run_small(method, 250, n_local=2)
        with torch.no_grad():  # the teacher's assignments of fresh views: marginal and per-sample entropy
            _, t = method.teacher["head"](method.teacher["backbone"](_views(_images(64, seed=1), seed=999)[0]))
            center = method.center.center if centering else 0.0
            p = torch.softmax((t - center) / method.teacher_schedule[1], dim=1)
            pbar = p.mean(0)
            marginal = float(-(pbar * pbar.clamp_min(1e-30).log()).sum())
            per_sample = float(-(p * p.clamp_min(1e-30).log()).sum(1).mean())
        runs[centering] = (_tail_mean(history, "discrete_entropy", 20), marginal, per_sample)
    collapsed, healthy = runs[False], runs[True]
    assert collapsed[0] < 0.05 * log_k and collapsed[1] < 0.05 * log_k, collapsed
    assert healthy[0] > 0.6 * log_k and healthy[1] > 0.6 * log_k, healthy
    assert healthy[1] - healthy[2] > 0.2, healthy  # I(W2; Z2) > 0: not the uniform collapse


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "swav", "deepcluster"])
def test_er_terms_ablation_maximises_the_named_term(name):
    """er_terms="entropy" / "reconstruction": the loss is minus that logged term, and the gradients of
    the two one-term losses add up to the gradient of the full ER loss (same weights, same batch)."""
    images = _images(N, seed=7)
    n_local = 2 if name in MULTICROP else 0
    grads, metrics = {}, {}
    for terms in ("both", "entropy", "reconstruction"):
        method = _build(f"{name}_er", seed=3, er_terms=terms)
        if name == "deepcluster":
            method.start_epoch(0)
        torch.manual_seed(11)
        out = method(_views(images, seed=5, n_local=n_local), 0.5, indices=torch.arange(N))
        out.loss.backward()
        grads[terms] = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in _trainable(method)])
        metrics[terms] = out.metrics
    m = metrics["both"]
    assert m["loss"] == pytest.approx(-(m["loss_entropy"] + m["loss_reconstruction"]), rel=1e-5, abs=1e-5)
    for terms, key in (("entropy", "loss_entropy"), ("reconstruction", "loss_reconstruction")):
        assert metrics[terms]["loss"] == pytest.approx(-metrics[terms][key], rel=1e-6, abs=1e-6)
        assert metrics[terms][key] == pytest.approx(m[key], rel=1e-5, abs=1e-5)  # same batch, same weights
    torch.testing.assert_close(grads["entropy"] + grads["reconstruction"], grads["both"], rtol=1e-4, atol=1e-5)
    assert grads["entropy"].norm() > 0 and grads["reconstruction"].norm() > 0


def test_er_terms_refuses_unknown_term():
    with pytest.raises(ValueError, match="er_terms"):
        _build("byol_er", er_terms="alignment")


# ----------------------------------------------------------------------------- heads and EMA: bad input by name
# (issue 15: 'no' / 2 / None were taken as bools, sizes failed inside torch, forwards accepted empty batches,
# the EMA took '0.5' for a momentum and None for a module)

_NOT_BOOL = ["no", "False", 2, None, 0.5]


@pytest.mark.parametrize("field", ["bn", "last_bn"])
@pytest.mark.parametrize("bad", _NOT_BOOL)
def test_mlp_spec_refuses_a_flag_that_is_not_a_bool(field, bad):
    with pytest.raises(TypeError, match=rf"^{field} must be True or False"):
        heads.MLPSpec(16, 8, **{field: bad})


@pytest.mark.parametrize("field", ["bn", "norm_last_layer"])
@pytest.mark.parametrize("bad", _NOT_BOOL)
def test_dino_head_spec_refuses_a_flag_that_is_not_a_bool(field, bad):
    with pytest.raises(TypeError, match=rf"^{field} must be True or False"):
        heads.DINOHeadSpec(16, 8, 12, **{field: bad})


def test_as_spec_prefixes_a_bad_field_with_the_callers_name():
    with pytest.raises(ValueError, match=r"^projector: hidden must be an int >= 1, got 0$"):
        heads.as_spec({"hidden": 0, "out": 8}, heads.MLPSpec, "projector")
    with pytest.raises(TypeError, match=r"^head: bn must be True or False"):
        heads.as_spec({"bn": "no"}, heads.DINOHeadSpec, "head")
    with pytest.raises(ValueError, match=r"^predictor is missing the fields \['out'\] of MLPSpec$"):
        heads.as_spec({"hidden": 8}, heads.MLPSpec, "predictor")
    with pytest.raises(ValueError, match=r"^hidden must be an int >= 1, got 0$"):  # no name: today's message
        heads.as_spec({"hidden": 0, "out": 8}, heads.MLPSpec)
    with pytest.raises(ValueError, match=r"^projector: layers must be"):
        heads.build_mlp(4, {"hidden": 8, "out": 2, "layers": 0}, name="projector")
    with pytest.raises(ValueError, match=r"^head: out must be"):
        heads.DINOHead(4, {"out": 0}, name="head")
    with pytest.raises(ValueError, match=r"^prototypes: n_prototypes must be"):
        heads.Prototypes(4, {"n_prototypes": 0}, name="prototypes")
    spec = heads.as_spec({"hidden": 8, "out": 2, "bn": False}, heads.MLPSpec, "projector")
    assert spec == heads.MLPSpec(8, 2, bn=False)


_BAD_SIZE = [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("3", TypeError), (None, TypeError),
             (True, TypeError), (float("nan"), TypeError)]


@pytest.mark.parametrize("bad, error", _BAD_SIZE)
@pytest.mark.parametrize("make, arg", [
    (lambda v: heads.WeightNormLinear(v, 6), "in_dim"),
    (lambda v: heads.WeightNormLinear(4, v), "out_dim"),
    (lambda v: heads.Prototypes(v, heads.PrototypeSpec(6)), "dim"),
    (lambda v: heads.DINOHead(v, heads.DINOHeadSpec(16, 8, 12)), "in_dim"),
], ids=["wn-in_dim", "wn-out_dim", "prototypes-dim", "dino-in_dim"])
def test_heads_refuse_a_bad_size_by_its_name(make, arg, bad, error):
    with pytest.raises(error, match=rf"^{arg} must be an int"):
        make(bad)


@pytest.mark.parametrize("bad", _NOT_BOOL)
def test_weight_norm_linear_refuses_a_learn_gain_that_is_not_a_bool(bad):
    with pytest.raises(TypeError, match="^learn_gain must be True or False"):
        heads.WeightNormLinear(4, 6, learn_gain=bad)


_BAD_BATCH = {
    "empty": (torch.zeros(0, 4), ValueError, "at least one sample"),
    "flattened": (torch.zeros(32), ValueError, r"shape \(N, 4\)"),
    "narrower": (torch.zeros(8, 3), ValueError, "4 features"),
    "int dtype": (torch.zeros(8, 4, dtype=torch.long), TypeError, "floating-point"),
    "None": (None, TypeError, "torch.Tensor"),
    "nested list": ([[0.0] * 4] * 8, TypeError, "torch.Tensor"),
    "string": ("tensor", TypeError, "torch.Tensor"),
}


@pytest.mark.parametrize("label", list(_BAD_BATCH))
@pytest.mark.parametrize("make, name", [
    (lambda: heads.Prototypes(4, heads.PrototypeSpec(6)), "z"),
    (lambda: heads.DINOHead(4, heads.DINOHeadSpec(16, 8, 12)), "x"),
    (lambda: heads.WeightNormLinear(4, 6), "x"),
], ids=["prototypes", "dino", "weight_norm"])
def test_head_forward_refuses_a_bad_batch_by_its_name(make, name, label):
    bad, error, what = _BAD_BATCH[label]
    with pytest.raises(error, match=rf"^{name} .*{what}"):
        make()(bad)


def test_head_forward_propagates_nan_without_reading_values():
    """By design (no per-step device sync): a NaN row gives NaN outputs for that row only."""
    z = F.normalize(torch.randn(5, 4), dim=1)
    z[2, 1] = float("nan")
    scores = heads.Prototypes(4, heads.PrototypeSpec(6, heads=2))(z)
    for s in scores:
        assert bool(s[2].isnan().all()) and bool(torch.isfinite(s[[0, 1, 3, 4]]).all())
    head = heads.DINOHead(4, heads.DINOHeadSpec(16, 8, 12)).eval()
    _, logits = head(z)
    assert bool(logits[2].isnan().all()) and bool(torch.isfinite(logits[[0, 1, 3, 4]]).all())


@pytest.mark.parametrize("bad", [None, "model", torch.zeros(3)])
def test_ema_refuses_a_module_that_is_not_one(bad):
    net = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"^module must be an nn.Module"):
        ema.frozen_copy(bad)
    with pytest.raises(TypeError, match=r"^teacher must be an nn.Module"):
        ema.ema_update_(bad, net, 0.5)
    with pytest.raises(TypeError, match=r"^student must be an nn.Module"):
        ema.ema_update_(ema.frozen_copy(net), bad, 0.5)


@pytest.mark.parametrize("bad, error", [("0.5", TypeError), (None, TypeError), (True, TypeError),
                                        (float("nan"), ValueError), (-0.1, ValueError)])
def test_ema_update_refuses_a_momentum_that_is_not_a_number_and_changes_nothing(bad, error):
    student = nn.Linear(3, 2)
    teacher = ema.frozen_copy(student)
    with torch.no_grad():
        teacher.weight.zero_()
    with pytest.raises(error, match="momentum"):
        ema.ema_update_(teacher, student, bad)
    assert torch.count_nonzero(teacher.weight) == 0


@pytest.mark.parametrize("arg", ["progress", "base", "final"])
@pytest.mark.parametrize("bad, error", [("0.5", TypeError), (None, TypeError), (True, TypeError),
                                        (float("nan"), ValueError), (float("inf"), ValueError), (2.0, ValueError)])
def test_cosine_momentum_refuses_bad_numbers_by_name(arg, bad, error):
    kw = dict(progress=0.5, base=0.996, final=1.0) | {arg: bad}
    with pytest.raises(error, match=arg):
        ema.cosine_momentum(**kw)


# ----------------------------------------------------------------------------- bad input named by the method's argument


@pytest.mark.parametrize("name, arg, bad, error, match", [
    ("simclr", "projector", {"hidden": 0, "out": 8}, ValueError, r"^projector: hidden must be an int >= 1, got 0$"),
    ("simclr", "projector", None, TypeError, r"^projector must be a MLPSpec or a dict of its fields, got NoneType$"),
    ("byol", "predictor", {"hidden": "16", "out": 8}, TypeError, r"^predictor: hidden must be an int, got str$"),
    ("byol", "predictor", "mlp", TypeError, r"^predictor must be a MLPSpec"),
    ("dino", "head", {"hidden": -1}, ValueError, r"^head: hidden must be an int >= 1, got -1$"),
    ("dino", "head", {"bogus": 1}, ValueError, r"^head has unknown fields \['bogus'\]"),
    ("swav", "prototypes", {"n_prototypes": 0}, ValueError, r"^prototypes: n_prototypes must be an int >= 1, got 0$"),
    ("deepcluster", "prototypes", {"n_prototypes": "8"}, TypeError, r"^prototypes: n_prototypes must be an int"),
])
def test_method_head_spec_errors_name_the_argument(name, arg, bad, error, match):
    # a bad field of a head given as a dict said "hidden must be an int >= 1" without naming the head
    with pytest.raises(error, match=match):
        _build(name, **{arg: bad})


@pytest.mark.parametrize("arg, bad, error", [
    ("teacher_temperature_start", 0.0, ValueError), ("teacher_temperature_start", "0.04", TypeError),
    ("teacher_temperature_start", True, TypeError), ("teacher_temperature_end", float("inf"), ValueError),
    ("teacher_temperature_end", None, TypeError), ("teacher_temperature_warmup", 1.5, ValueError),
    ("teacher_temperature_warmup", True, TypeError), ("center_momentum", -0.1, ValueError),
    ("center_momentum", "0.9", TypeError), ("center_momentum", None, TypeError),
])
def test_dino_schedule_errors_name_the_argument(arg, bad, error):
    # they said "start must be a finite number > 0" / "momentum must be ...": the names of internal arguments
    with pytest.raises(error, match=f"^{arg} must be a "):
        _build("dino", **{arg: bad})


def test_dino_keeps_its_teacher_temperature_schedule():
    method = _build(
        "dino", teacher_temperature_start=0.02, teacher_temperature_end=0.08, teacher_temperature_warmup=0.5
    )
    assert method.teacher_schedule == (0.02, 0.08, 0.5)
    assert method.center.momentum == pytest.approx(0.9)


def _bad_views(label: str, views: list[torch.Tensor]) -> list:
    return {
        "a string": ["x"] + views[1:],
        "1-D": [v.reshape(-1) for v in views],
        "int dtype": [v.round().long() for v in views],
        "fewer channels": [views[0], views[1][:, :2]],
        "a channel more": [views[0], torch.cat([views[1], views[1][:, :1]], dim=1)],
    }[label]


@pytest.mark.parametrize("label, error, match", [
    ("a string", TypeError, r"^views\[0\] must be a tensor \(an image batch\), got str$"),
    ("1-D", ValueError, r"^views\[0\] must have shape \(N, C, H, W\), got a tensor of shape \(12288,\)$"),
    ("int dtype", TypeError, r"^views\[0\] must be a floating-point image batch, got dtype torch.int64$"),
    ("fewer channels", ValueError,
     r"^every view must have the same number of channels, views\[0\] has 3 and views\[1\] 2$"),
    ("a channel more", ValueError, r"same number of channels, views\[0\] has 3 and views\[1\] 4$"),
])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_refuses_views_that_do_not_fit_by_name(name, label, error, match):
    # they ended in AttributeError ('str' has no attribute 'shape') or conv2d's RuntimeError
    method = _build(name)
    views = _bad_views(label, _views(_images(N, 5), seed=0))
    with pytest.raises(error, match=match):
        method(views, 0.5, indices=torch.arange(N))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_forward_names_views_when_the_projections_are_not_finite(name, value):
    # the loss's own finiteness check (no new sync) said "z1 must contain only finite values"
    method = _build(name)
    n_local = 2 if _base(name) in MULTICROP else 0
    views = _views(_images(N, 5), seed=0, n_local=n_local)
    views[0][3, 1, 4, 4] = value
    with pytest.raises(ValueError, match=r"^views gave non-finite projections \(NaN or inf in the input views, "
                                         r"or weights that diverged\): \S+ must contain only finite values"):
        method(views, 0.5, indices=torch.arange(N))


@pytest.mark.parametrize("shift", [100, -100, -N, 2 * N])
@pytest.mark.parametrize("name", ["deepcluster", "deepcluster_er"])
def test_deepcluster_refuses_indices_out_of_range_and_keeps_its_bank(name, shift):
    # 100 ended in an IndexError; -N (values -16..-1) wrote silently into the last rows of the bank
    method = _build(name)
    views = _views(_images(N, 5), seed=0, n_local=2)
    bad = torch.arange(N) + shift
    expected = rf"^indices must be data-set indices in \[0, dataset_size = {2 * N}\), got values from " \
               rf"{shift} to {N - 1 + shift}$"
    with pytest.raises(ValueError, match=expected):
        method(views, 0.5, indices=bad)
    with pytest.raises(ValueError, match=expected):
        method.fill_memory_(views, bad)
    assert not bool(method.seen.any()) and float(method.memory.abs().sum()) == 0.0
    method(views, 0.5, indices=torch.arange(N) + N)  # the last valid rows
    assert method.seen.tolist() == [False] * N + [True] * N
