"""The trainer's data loading: one DataLoader per run with persistent workers, the epoch carried to the
workers with the indices (exact views, exact resume), and ``data.gpu_pipeline: auto`` resolved from the
run's device.

Tiny runs as in test_train.py: 32 shapes of 16x16, global batch 16 (2 steps an epoch), a 2-stage ConvNet.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mvssl_core import build as build_mod
from mvssl_core import dist, gpu_views
from mvssl_core import sampler as sampler_mod
from mvssl_core import train as train_mod
from mvssl_core.config import load_config
from mvssl_core.dist import Runtime
from mvssl_core.runstate import CHECKPOINT_NAME, load_checkpoint
from mvssl_core.sampler import GlobalBatchSampler
from mvssl_core.train import train
from test_train import _one_thread  # noqa: E402,F401  (autouse: one torch thread a test)


def _values(out: Path, **top) -> dict:
    values = {
        "method": "simclr",
        "hyper": {"projector": {"hidden": 32, "out": 16}},
        "data": {"name": "shapes", "size": 16, "n": 32},
        "model": {"backbone": "convnet", "kwargs": {"widths": [8, 16]}},
        "optim": {"name": "sgd", "lr": 0.1, "warmup_epochs": 0.0},
        "batch_size": 16, "steps": 4, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
        "progress": False, "device": "cpu", "out": str(out), "eval": {"knn": False, "linear": False},
    }
    for key, value in top.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    return values


def _cfg(out: Path, **top):
    return load_config(None, base=_values(out, **top))


class _Recorder:
    """Replaces train.DataLoader: counts the loaders made and keeps a copy of every batch they yield."""

    def __init__(self) -> None:
        self.loaders: list[dict] = []  # each loader's settings (not the loader: its workers would outlive the run)
        self.batches: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        recorder = self

        class Counted(DataLoader):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                recorder.loaders.append({"persistent_workers": self.persistent_workers})

            def __iter__(self):
                for views, labels, indices in super().__iter__():
                    recorder.batches.append(([v.clone() for v in views], indices.clone()))
                    yield views, labels, indices

        self.cls = Counted


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


# ------------------------------------------------------------------------------------------------
# the sampler carries the epoch


def test_sampler_yields_epoch_index_pairs_of_the_same_batches():
    plain = GlobalBatchSampler(40, 8, accumulate=2, seed=3)
    paired = GlobalBatchSampler(40, 8, accumulate=2, seed=3, with_epoch=True)
    for epoch, start in [(0, 0), (1, 0), (2, 3)]:
        plain.set_epoch(epoch, start)
        paired.set_epoch(epoch, start)
        expected = [[(epoch, i) for i in batch] for batch in plain]
        assert list(paired) == expected and len(expected) == (5 - start) * 2


# ------------------------------------------------------------------------------------------------
# one loader, persistent workers, exact views


def test_persistent_workers_draw_each_epochs_views_and_equal_the_main_process(tmp_path, monkeypatch):
    """Two epochs with 2 persistent workers: one DataLoader for the run, new views in epoch 1 (the epoch
    reached the workers), and every batch and the final parameters bit for bit those of 0 workers."""
    runs = {}
    for workers in (0, 2):
        rec = _Recorder()
        monkeypatch.setattr(sampler_mod, "DataLoader", rec.cls)
        train(_cfg(tmp_path / f"w{workers}", num_workers=workers))
        assert len(rec.loaders) == 1  # built once, not once an epoch
        assert rec.loaders[0]["persistent_workers"] is (workers > 0)
        assert len(rec.batches) == 4  # 2 epochs x 2 steps
        runs[workers] = rec.batches

    for (va, ia), (vb, ib) in zip(runs[0], runs[2], strict=True):
        assert torch.equal(ia, ib) and all(torch.equal(a, b) for a, b in zip(va, vb, strict=True))
    a, b = _params(tmp_path / "w0"), _params(tmp_path / "w2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # each item's first view in epoch 0 and in epoch 1: drawn under another seed
    def first_views(batches):
        return {int(i): v for views, idx in batches for i, v in zip(idx, views[0])}

    epoch0, epoch1 = first_views(runs[2][:2]), first_views(runs[2][2:])
    assert epoch0.keys() == epoch1.keys() == set(range(32))
    assert all(not torch.equal(epoch0[i], epoch1[i]) for i in range(32))


def test_resume_mid_epoch_with_persistent_workers_is_exact(tmp_path):
    """Stopped at step 3 (inside epoch 1) and resumed, with 2 workers: the parameters of the uninterrupted
    run without workers, bit for bit."""
    train(_cfg(tmp_path / "straight"))
    cfg = _cfg(tmp_path / "broken", num_workers=2, checkpoint_every=1)
    assert train(cfg, stop_after=3) is None
    assert int(load_checkpoint(tmp_path / "broken" / CHECKPOINT_NAME)["step"]) == 3
    train(cfg, resume=True)
    a, b = _params(tmp_path / "broken"), _params(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpu_pipeline_with_persistent_workers_equals_no_workers(tmp_path, monkeypatch):
    """The batched views (in-memory uint8 shapes; on CPU the same code as on CUDA) through the keyed loader."""
    counts = []
    for workers in (0, 2):
        rec = _Recorder()
        monkeypatch.setattr(sampler_mod, "DataLoader", rec.cls)
        train(_cfg(tmp_path / f"w{workers}", num_workers=workers, data={"gpu_pipeline": True}))
        counts.append(len(rec.loaders))
        assert all(v.dtype == torch.uint8 for views, _ in rec.batches for v in views)  # images, not views
    assert counts == [1, 1]
    a, b = _params(tmp_path / "w0"), _params(tmp_path / "w2")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# smaller worker tasks: a micro-batch read as pieces


def test_sampler_pieces_join_to_the_whole_micro_batches():
    whole = GlobalBatchSampler(80, 16, accumulate=2, world_size=2, rank=1, seed=5, with_epoch=True)
    cut = GlobalBatchSampler(80, 16, accumulate=2, world_size=2, rank=1, seed=5, with_epoch=True, piece=3)
    assert (whole.pieces, cut.piece, cut.pieces) == (1, 3, 2)  # 4 per rank: pieces of 3 and 1
    for s in (whole, cut):
        s.set_epoch(1, 2)
    pieces = list(cut)
    assert len(pieces) == len(cut) == 2 * len(whole) and [len(p) for p in pieces[:2]] == [3, 1]
    assert [pieces[i] + pieces[i + 1] for i in range(0, len(pieces), 2)] == list(whole)
    assert GlobalBatchSampler(80, 16, piece=100).pieces == 1
    with pytest.raises(ValueError, match="piece must be an int >= 1"):
        GlobalBatchSampler(80, 16, piece=0)


def test_join_pieces_of_every_pipeline():
    views = [([torch.full((2, 3), 1.0), torch.full((2, 5), 2.0)], torch.tensor([0, 1]), torch.tensor([7, 8])),
             ([torch.full((1, 3), 3.0), torch.full((1, 5), 4.0)], torch.tensor([2]), torch.tensor([9]))]
    joined, labels, indices = sampler_mod.join_pieces(views)
    assert [v.shape for v in joined] == [(3, 3), (3, 5)] and joined[0][2, 0] == 3.0 and joined[1][0, 0] == 2.0
    assert labels.tolist() == [0, 1, 2] and indices.tolist() == [7, 8, 9]
    images = [(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), torch.tensor([0, 1])),
              (torch.ones(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([2]), torch.tensor([2]))]
    assert sampler_mod.join_pieces(images)[0].shape == (3, 3, 4, 4)
    files = [([torch.arange(5, dtype=torch.uint8), torch.arange(3, dtype=torch.uint8)], torch.tensor([0, 1]),
              torch.tensor([0, 1])), ([torch.arange(4, dtype=torch.uint8)], torch.tensor([2]), torch.tensor([2]))]
    assert [len(f) for f in sampler_mod.join_pieces(files)[0]] == [5, 3, 4]
    assert sampler_mod.join_pieces(files[:1]) is files[0]


@pytest.mark.parametrize("gpu_pipeline", [False, True], ids=["cpu-views", "device-views"])
def test_workers_on_pieces_train_bit_for_bit_as_whole_micro_batches(tmp_path, monkeypatch, gpu_pipeline):
    """Pieces of 3 samples (the trainer's micro-batch of 16 read as 6 loader items by 2 workers): every
    parameter equals the run that reads whole micro-batches in the main process."""
    train(_cfg(tmp_path / "whole", data={"gpu_pipeline": gpu_pipeline}))
    rec = _Recorder()
    monkeypatch.setattr(sampler_mod, "DataLoader", rec.cls)
    monkeypatch.setattr(sampler_mod, "WORKER_TASK", 3)
    train(_cfg(tmp_path / "pieces", num_workers=2, data={"gpu_pipeline": gpu_pipeline}))
    assert len(rec.batches) == 4 * 6 and max(len(idx) for _, idx in rec.batches) == 3
    a, b = _params(tmp_path / "whole"), _params(tmp_path / "pieces")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# data.gpu_pipeline: auto


def _runtime(device: str) -> Runtime:
    return Runtime(torch.device(device), rank=0, world_size=1, distributed=False, bf16=False,
                   channels_last=False, owns_group=False)


@pytest.mark.parametrize("data,setting,device,expected", [
    ("imagefolder", "auto", "cuda", True),
    ("imagefolder", "auto", "cpu", False),
    ("cifar10", "auto", "cuda", False),  # no batched views for it: the CPU pipeline
    ("digits", "auto", "cuda", False),  # in memory and small: "auto" keeps the per-item views
    ("imagefolder", True, "cpu", True),
    ("imagefolder", False, "cuda", False),
])
def test_auto_gpu_pipeline_follows_the_device(tmp_path, data, setting, device, expected):
    cfg = _cfg(tmp_path, data={"name": data, "gpu_pipeline": setting})
    assert build_mod.use_gpu_pipeline(cfg, _runtime(device)) is expected


def test_auto_on_a_cuda_runtime_builds_the_device_pipeline(tmp_path, monkeypatch):
    """Through the trainer: the runtime's device decides which data set ``auto`` builds."""
    built = []
    original = train_mod.build_train_set
    monkeypatch.setattr(train_mod, "build_train_set",
                        lambda cfg, gpu: built.append((cfg.data.name, gpu)) or original(cfg, gpu))
    root = tmp_path / "images" / "train" / "c0"
    root.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(root / f"{i}.jpg")
    folder = {"name": "imagefolder", "root": str(tmp_path / "images"), "gpu_pipeline": "auto"}
    train(_cfg(tmp_path / "cpu", data={"gpu_pipeline": "auto"}, steps=1))  # shapes on CPU: trains
    # imagefolder on a CUDA runtime (no GPU here: stop once the data set is built)
    monkeypatch.setattr(dist, "init_runtime", lambda cfg: _runtime("cuda"))
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        train(_cfg(tmp_path / "cuda", data=folder, batch_size=2))
    assert built == [("shapes", False), ("imagefolder", True)]
    assert isinstance(original(_cfg(tmp_path, data=folder), True), gpu_views.JpegBytes)


class _Stalling(torch.utils.data.Dataset):
    """Stands in for a worker that never sends its batch (the JpegBytes hang of issue 13, item 1)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        import time

        time.sleep(60)
        return self.dataset[index]


def test_a_worker_that_sends_nothing_ends_the_run_instead_of_waiting_forever(tmp_path, monkeypatch):
    """The trainer's loader has a timeout (LOADER_TIMEOUT_S) when it has workers: before, no timeout, and a
    worker that dropped its batch left the run waiting without end."""
    import time

    monkeypatch.setattr(sampler_mod, "LOADER_TIMEOUT_S", 2)
    build = train_mod.build_train_set
    monkeypatch.setattr(train_mod, "build_train_set", lambda *a, **k: _Stalling(build(*a, **k)))
    before = set(multiprocessing.active_children())
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        train(_cfg(tmp_path / "run", num_workers=1))
    assert time.monotonic() - t0 < 30
    # the stuck worker (it ignores SIGTERM, as every trainer worker) is gone: the interpreter's exit, which
    # joins its children, would otherwise wait for it
    assert [p for p in multiprocessing.active_children() if p not in before] == []
