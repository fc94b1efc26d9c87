"""``model.sync_bn``: BatchNorm over the global batch in distributed GPU runs (:func:`mvssl_core.dist.sync_batchnorm`).

On CPU, what can be checked: the config key; the conversion itself (module types after the trainer's
build, EMA teachers included, the same parameter objects and state-dict keys); that one process is a
no-op; that a converted network in eval mode equals the plain one (a rank-0-only evaluation runs no
collective); and, with 2 real gloo processes, that torch's SyncBatchNorm refuses CPU inputs (why CPU runs
keep plain BN), that the helper then keeps plain BN with one warning from rank 0, and that
``pretrain`` under torchrun with ``model.sync_bn=true`` trains on CPU and logs that warning.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from mvssl_core import dist
from mvssl_core.config import ConfigError, load_config
from mvssl_core.ema import ema_update_
from mvssl_core.build import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "scripts" / "configs" / "imagenet"
HEAD = {"hidden": 16, "out": 8}
CUDA = torch.device("cuda", 0)  # only its type is read: the conversion itself touches no device


def _values(method: str, **top) -> dict:
    hyper = {"simclr": {"projector": HEAD}, "byol": {"projector": HEAD, "predictor": HEAD},
             "dino": {"head": {"hidden": 16, "bottleneck": 8, "out": 4, "bn": True}},
             "swav": {"projector": HEAD, "prototypes": {"n_prototypes": 4}},
             "deepcluster": {"projector": HEAD, "prototypes": {"n_prototypes": 4}}}[method.removesuffix("_er")]
    values = {"method": method, "hyper": hyper,
              "data": {"name": "shapes", "size": 16, "n": 16},
              "model": {"backbone": "convnet", "kwargs": {"widths": [4, 8]}},
              "batch_size": 8, "steps": 2, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
              "progress": False, "eval": {"knn": False, "linear": False}}
    values.update(top)
    return values


def _batchnorms(module: nn.Module) -> list[str]:
    """Names of the plain (not synchronised) BatchNorm layers."""
    return [n for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)]


def _syncs(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.SyncBatchNorm)]


# ------------------------------------------------------------------------------------------------
# the key


def test_sync_bn_key_is_a_bool_off_by_default():
    assert load_config(None, base=_values("simclr")).model.sync_bn is False
    assert load_config(None, ["model.sync_bn=true"], base=_values("simclr")).model.sync_bn is True
    for bad in ("model.sync_bn=yes", "model.sync_bn=1", 'model.sync_bn="true"'):
        with pytest.raises(ConfigError, match="model.sync_bn"):
            load_config(None, [bad], base=_values("simclr"))


RECIPES = ["simclr", "simclr_er", "byol", "byol_er", "dino", "dino_er", "swav", "swav_er", "deepcluster",
           "deepcluster_er"]


@pytest.mark.parametrize("method", RECIPES)
def test_imagenet_recipes_use_global_batchnorm(method):
    """Every method's paper or official code normalises over the global batch; the YAML says which."""
    assert load_config(CONFIGS / f"{method}.yaml").model.sync_bn is True
    text = (CONFIGS / f"{method}.yaml").read_text()
    source = {"simclr": '"Global BN"', "byol": "cross_replica_axis", "dino": "main_dino.py",
              "swav": "main_swav.py", "deepcluster": "main_deepclusterv2.py"}[method.removesuffix("_er")]
    line = next(line for line in text.splitlines() if line.strip().startswith("sync_bn:"))
    assert source in text[text.index(line):][:400]


# ------------------------------------------------------------------------------------------------
# the conversion (the trainer's build, then what the trainer does before DDP on a GPU)


@pytest.mark.parametrize("method", ["simclr", "byol", "dino", "swav", "deepcluster"])
def test_conversion_covers_every_batchnorm_teachers_included(method, monkeypatch):
    cfg = load_config(None, base=_values(method))
    model = build_model(cfg, 16)
    before = _batchnorms(model)
    params = [id(p) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert before and not _syncs(model)
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    converted = dist.sync_batchnorm(model, CUDA)
    assert converted is model  # the method object itself: the trainer's hooks and references stay valid
    assert _batchnorms(model) == [] and _syncs(model) == before
    if method in ("byol", "dino"):  # the EMA teacher's BatchNorm too (it runs in training mode)
        assert any(name.startswith("teacher.") for name in _syncs(model))
    # the optimizer built before the conversion holds the same tensors, in the same order
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert list(after) == list(state)
    for key in state:
        assert torch.equal(after[key], state[key]), key
    if method in ("byol", "dino"):  # the EMA pairs teacher and student parameters by order: still aligned
        teacher = model.teacher["backbone"]
        ema_update_(teacher, model.backbone, 0.0)
        for t, s in zip(teacher.state_dict().values(), model.backbone.state_dict().values()):
            assert torch.equal(t, s)


def test_one_process_is_a_no_op():
    model = build_model(load_config(None, base=_values("byol")), 16)
    before = _batchnorms(model)
    assert dist.sync_batchnorm(model, CUDA) is model
    assert _batchnorms(model) == before and not _syncs(model)


def test_converted_network_in_eval_mode_equals_plain_batchnorm_on_cpu():
    """Eval mode uses the running statistics, with no collective and on any device: rank 0 alone can evaluate."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6))
    plain.train()
    for _ in range(3):  # running statistics away from their initial values
        plain(torch.randn(8, 3, 6, 6))
    plain.eval()
    x = torch.randn(5, 3, 6, 6)
    expected = plain(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain)).eval()
    assert len(_syncs(synced)) == 2
    torch.testing.assert_close(synced(x), expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# 2 gloo processes on CPU


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    out: dict = {}
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    try:  # torch's own SyncBatchNorm on a CPU input under gloo
        nn.SyncBatchNorm.convert_sync_batchnorm(net)(torch.randn(5, 3))
        out["torch_cpu"] = "ok"
    except ValueError as e:
        out["torch_cpu"] = str(e)
    records = _Records()
    logging.getLogger("mvssl_core.dist").addHandler(records)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    kept = dist.sync_batchnorm(net, torch.device("cpu"))
    out["same"] = kept is net
    out["types"] = [type(m).__name__ for m in kept]
    out["forward"] = list(kept(torch.randn(5, 3)).shape)  # trains with per-process statistics
    out["warnings"] = records.messages
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]


def test_gloo_on_cpu_keeps_plain_batchnorm_with_one_warning(gloo_results):
    for rank, out in enumerate(gloo_results):
        # why: torch 2.14's SyncBatchNorm refuses CPU tensors (if this ever passes, CPU runs could sync too)
        assert "expected input tensor to be on GPU" in out["torch_cpu"], out["torch_cpu"]
        assert out["same"] and out["types"] == ["Linear", "BatchNorm1d"] and out["forward"] == [5, 4]
        if rank == 0:
            assert len(out["warnings"]) == 1 and "per-process BatchNorm" in out["warnings"][0]
        else:
            assert out["warnings"] == []


def test_pretrain_with_sync_bn_on_two_cpu_processes(tmp_path):
    """The trainer's wiring: under torchrun on CPU the run trains with plain BN and says so once."""
    values = _values("simclr", out=str(tmp_path / "run"), model={"backbone": "convnet", "kwargs": {"widths": [4, 8]},
                                                                 "sync_bn": True})
    (tmp_path / "cfg.yaml").write_text(json.dumps(values))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mvssl_core", "pretrain", "--config", str(tmp_path / "cfg.yaml")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("model.sync_bn: torch's SyncBatchNorm needs a GPU") == 1, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)
