"""Evaluation: the weighted kNN classifier and the linear probe on synthetic features with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvssl_core.evaluate import extract_features, knn_accuracy, knn_classify, linear_probe


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine two threads are many times slower."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def _clusters(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 0.1):
    """Well-separated classes: a random unit centre per class plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1) * 3
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_knn_separable_features_are_classified_perfectly():
    xtr, ytr = _clusters(30, 5, 16, seed=0)
    xte, yte = _clusters(20, 5, 16, seed=0)  # same centres (same seed), different noise draws below
    xte = xte + 0.05 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(1))
    assert knn_accuracy(xtr, ytr, xte, yte) == 1.0
    assert knn_accuracy(xtr, ytr, xte, yte, k=1, chunk_size=7) == 1.0


def test_knn_random_labels_give_chance():
    g = torch.Generator().manual_seed(2)
    xtr, xte = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    ytr, yte = torch.randint(0, 4, (2000,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(knn_accuracy(xtr, ytr, xte, yte) - 0.25) < 0.05


def test_knn_weighting_follows_dino():
    """Two close neighbours of class 0 outvote three far ones of class 1 through exp(cos / T)."""
    train = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.2]])
    assert knn_classify(train, labels, query, k=5, temperature=0.07).item() == 0
    # with a very high temperature the votes are almost equal: the majority wins
    assert knn_classify(train, labels, query, k=5, temperature=100.0).item() == 1


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_linear_probe_separable_and_random(backend):
    xtr, ytr = _clusters(40, 4, 12, seed=3)
    xte, yte = _clusters(25, 4, 12, seed=3)
    kw = dict(backend=backend, epochs=30) if backend == "torch" else dict(backend=backend)
    out = linear_probe(xtr, ytr, xte, yte, **kw)
    assert out["backend"] == backend
    assert out["test_top1"] == 1.0 and out["train_top1"] == 1.0

    g = torch.Generator().manual_seed(4)
    xtr, xte = torch.randn(600, 10, generator=g), torch.randn(2000, 10, generator=g)
    ytr, yte = torch.randint(0, 2, (600,), generator=g), torch.randint(0, 2, (2000,), generator=g)
    out = linear_probe(xtr, ytr, xte, yte, **kw)
    assert abs(out["test_top1"] - 0.5) < 0.05


def test_linear_probe_ignores_unlabelled_and_standardises():
    xtr, ytr = _clusters(40, 3, 6, seed=5)
    xte, yte = _clusters(10, 3, 6, seed=5)
    ytr = ytr.clone()
    ytr[::7] = -1  # e.g. STL-10's unlabeled split
    scale = torch.tensor([1e4, 1e-3, 1.0, 1.0, 1e2, 1.0])  # badly scaled features
    out = linear_probe(xtr * scale, ytr, xte * scale, yte, backend="torch", epochs=30)
    assert out["test_top1"] == 1.0


def test_bad_inputs_are_named():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="labels must have shape"):
        knn_classify(x, y[:5], x)
    with pytest.raises(ValueError, match="test_features must have 4 columns"):
        knn_classify(x, y, torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(x, y, x, temperature=0.0)
    with pytest.raises(TypeError, match="integers"):
        linear_probe(x, y.float(), x, y)
    with pytest.raises(ValueError, match="finite"):
        knn_classify(x.masked_fill(x > 0, float("nan")), y, x)
    with pytest.raises(ValueError, match="backend"):
        linear_probe(x, y, x, y, backend="svm")
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, torch.zeros(10, dtype=torch.long), x, y)


def test_extract_features_in_eval_mode_and_restores_mode():
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)
            self.modes = []

        def forward(self, x):
            self.modes.append(self.training)
            return self.bn(x.flatten(1)[:, :3])

    data = [(torch.full((1, 2, 2), float(i)), i % 2) for i in range(10)]
    net = Recorder().train()
    feats, labels = extract_features(net, data, batch_size=4)
    assert feats.shape == (10, 3) and labels.tolist() == [i % 2 for i in range(10)]
    assert net.modes == [False, False, False] and net.training
    feats, _ = extract_features(net, data, batch_size=4, max_samples=6)
    assert feats.shape == (6, 3)


# ------------------------------------------------------------------------------------------------
# the linear-evaluation protocol (scripts/linear_eval.sh; end to end in tests/test_scripts.py)


def test_topk_correct_counts_by_hand():
    from mvssl_core.evaluate import topk_correct

    logits = torch.tensor([[0.1, 0.5, 0.2, 0.0],    # order 1, 2, 0, 3
                           [0.9, 0.0, 0.3, 0.4],    # order 0, 3, 2, 1
                           [0.0, 0.1, 0.2, 0.3]])   # order 3, 2, 1, 0
    labels = torch.tensor([1, 2, 0])
    # top-1: row 0 only; top-2: rows 0; top-3: rows 0, 1; top-5 (> 4 classes): all
    assert topk_correct(logits, labels, (1, 2, 3, 5)) == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="logits must be"):
        topk_correct(logits[0], labels)


class _ListSet(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _image_clusters(n_per_class, n_classes, seed):
    feats, labels = _clusters(n_per_class, n_classes, 2 * 3 * 3, seed=0, spread=0.3)
    feats = feats + 0.3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(seed))
    return _ListSet(feats.reshape(-1, 2, 3, 3), labels)  # "images" of 2 x 3 x 3


def test_linear_eval_learns_separable_classes_and_leaves_the_encoder_alone():
    from mvssl_core.evaluate import linear_eval

    backbone = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(18))
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    out = linear_eval(backbone, _image_clusters(16, 8, seed=1), _image_clusters(8, 8, seed=2), n_classes=8,
                      feature_dim=18, epochs=30, batch_size=32, lr=1.0, seed=0)
    assert out["top1"] == 1.0 and out["top5"] == 1.0 and out["train_top1"] > 0.9
    assert out["n_val"] == 64 and out["n_train"] == 128 and out["world_size"] == 1
    assert out["lr"] == pytest.approx(1.0 * 32 / 256)  # linear scaling rule
    # frozen and in eval mode during the protocol (BatchNorm statistics untouched), restored after
    assert backbone.training and all(p.requires_grad for p in backbone.parameters())
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_linear_eval_random_labels_give_chance_top1_and_top5():
    from mvssl_core.evaluate import linear_eval

    g = torch.Generator().manual_seed(0)
    train = _ListSet(torch.randn(256, 2, 3, 3, generator=g), torch.randint(0, 10, (256,), generator=g))
    val = _ListSet(torch.randn(400, 2, 3, 3, generator=g), torch.randint(0, 10, (400,), generator=g))
    out = linear_eval(nn.Flatten(), train, val, n_classes=10, feature_dim=18, epochs=5, batch_size=64, seed=0)
    assert 0.0 <= out["top1"] < 0.25 and 0.3 < out["top5"] < 0.7  # chance: 0.1 and 0.5


def test_linear_eval_train_transform_crops_and_flips_only():
    from mvssl_core.evaluate import linear_eval_train_transform

    t = linear_eval_train_transform(16, normalize=None)
    names = [type(x).__name__ for x in t.transforms]
    assert "RandomResizedCrop" in names and "RandomHorizontalFlip" in names
    assert not {"ColorJitter", "RandomApply", "RandomGrayscale", "GaussianBlur", "RandomSolarize"} & set(names)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and not torch.equal(a, b)


def test_linear_eval_bad_arguments_are_named():
    from mvssl_core.evaluate import linear_eval

    data = _image_clusters(4, 2, seed=0)
    with pytest.raises(ValueError, match="n_classes"):
        linear_eval(nn.Flatten(), data, data, n_classes=1, feature_dim=18)
    with pytest.raises(ValueError, match="momentum"):
        linear_eval(nn.Flatten(), data, data, n_classes=2, feature_dim=18, batch_size=4, momentum=1.0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        linear_eval(nn.Flatten(), data, data, n_classes=2, feature_dim=18, batch_size=64)


@pytest.mark.parametrize("train,val,named", [
    (("a", "b", "c"), ("a", "c"), "only in 'train': ['b']; only in 'val': none"),
    (("a", "b"), ("a", "b", "z"), "only in 'train': none; only in 'val': ['z']"),
])
def test_evaluation_splits_with_other_class_folders_are_refused(tmp_path, train, val, named):
    """Issue 15, finding 2: each ImageFolder split numbers its own sorted classes, so with train {a, b, c} and
    val {a, c} val's c got train's b label and kNN scored against shifted labels. Refused, naming them."""
    from PIL import Image

    from mvssl_core.config import ConfigError, RunConfig, from_dict
    from mvssl_core.build import build_eval_sets

    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / c / "0.png")
    cfg = from_dict(RunConfig, {"method": "simclr", "out": str(tmp_path / "run"),
                                "data": {"name": "imagefolder", "root": str(tmp_path), "size": 8}})
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        build_eval_sets(cfg)
    for c in set(train) ^ set(val):  # the same class folders in both: one index, accepted
        for split in ("train", "val"):
            (tmp_path / split / c).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / c / "0.png")
    train_set, val_set = build_eval_sets(cfg)
    assert train_set.class_to_idx == val_set.class_to_idx


# ------------------------------------------------------------------------------------------------
# evaluation at scale (issue 13, item 8): kNN in bounded blocks on the device, workers, a resumable protocol


def _dense_knn_votes(xtr, ytr, xte, k, temperature, n_classes):
    """The kNN votes in one (M, N) similarity matrix, transcribed from DINO's eval_knn.py."""
    train = torch.nn.functional.normalize(xtr.float(), dim=1)
    test = torch.nn.functional.normalize(xte.float(), dim=1)
    top_sim, top_idx = (test @ train.T).topk(min(k, len(train)), dim=1)
    return torch.zeros(len(test), n_classes).scatter_add_(1, ytr[top_idx], (top_sim / temperature).exp())


@pytest.mark.parametrize("rows,block_bytes", [(None, 256 * 2**20), (1, None), (7, None), (32, None), (96, None),
                                              (97, None), (None, 4 * 301 * 13), (None, 1)])
def test_blocked_knn_equals_the_dense_computation(rows, block_bytes):
    """Blocks of 1 to all 97 test rows (most not dividing 97), by count or by memory budget: the votes of the dense
    computation (to float32 rounding, times 1/T = 14 through exp(cos / T): the matrix product sums in another
    order for other block shapes) and the same predictions."""
    from mvssl_core.evaluate import KNN_BLOCK_BYTES, _knn_votes

    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(301, 17, generator=g), torch.randint(0, 7, (301,), generator=g)
    xte = torch.randn(97, 17, generator=g)
    ref = _dense_knn_votes(xtr, ytr, xte, 20, 0.07, 7)
    votes = list(_knn_votes(xtr, ytr, xte, 20, 0.07, 7, rows, "cpu", block_bytes or KNN_BLOCK_BYTES))
    expected_rows = rows or max(1, (block_bytes or KNN_BLOCK_BYTES) // (4 * 301))
    assert [len(v) for v in votes][:-1] == [expected_rows] * (len(votes) - 1) and sum(map(len, votes)) == 97
    torch.testing.assert_close(torch.cat(votes), ref, rtol=1e-5, atol=0)
    preds = knn_classify(xtr, ytr, xte, chunk_size=rows, block_bytes=block_bytes or KNN_BLOCK_BYTES, device="cpu")
    assert torch.equal(preds, ref.argmax(1))


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_blocked_knn_breaks_ties_like_the_dense_computation(rows):
    """Exact ties (cosines 0 and 1 of one-hot features; duplicated training samples of other classes): topk's
    choice among equal cosines and the lowest class among equal votes, whatever the block."""
    from mvssl_core.evaluate import _knn_votes

    eye = torch.eye(3)
    xtr = torch.cat([eye, eye, eye[:1]])          # samples 0-2, again 3-5, and e0 a third time
    ytr = torch.tensor([2, 0, 1, 1, 2, 0, 0])
    xte = torch.cat([eye, eye[[2, 0]]])           # 5 queries
    for k in (1, 2, 3, 7):
        ref = _dense_knn_votes(xtr, ytr, xte, k, 0.07, 3)
        votes = torch.cat(list(_knn_votes(xtr, ytr, xte, k, 0.07, 3, rows, "cpu", 1)))
        assert torch.equal(votes, ref), k
        assert torch.equal(knn_classify(xtr, ytr, xte, k=k, chunk_size=rows), ref.argmax(1)), k
    # by hand, k = 2: e1's neighbours are samples 1 (class 0) and 4 (class 2), equal votes: the lower class, 0
    assert knn_classify(xtr, ytr, eye[1:2], k=2, chunk_size=rows).tolist() == [0]


def test_knn_block_rows_follow_the_memory_budget():
    from mvssl_core.evaluate import KNN_BLOCK_BYTES, knn_block_rows

    assert KNN_BLOCK_BYTES == 256 * 2**20
    for n in (1, 1000, 50_000, 1_281_167, 2**26, 10**9):
        rows = knn_block_rows(n)
        assert rows == 1 or rows * n * 4 <= KNN_BLOCK_BYTES < (rows + 1) * n * 4, n
    assert knn_block_rows(1_281_167) == 52  # ImageNet: 52 test rows, 254 MiB (was 1024 rows, 5 GB)
    assert knn_block_rows(100, block_bytes=4 * 100 * 3 + 5) == 3 and knn_block_rows(10**9) == 1
    with pytest.raises(ValueError, match="block_bytes"):
        knn_block_rows(10, block_bytes=0)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_classify(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(2, 2), chunk_size=0)


def test_evaluate_run_extracts_on_the_run_device_with_the_configured_workers(tmp_path, monkeypatch):
    """evaluate_run loaded the evaluation images in the main process (num_workers=0) whatever the config."""
    from mvssl_core import evaluate
    from mvssl_core.config import RunConfig, from_dict
    from mvssl_core.dist import Runtime
    from mvssl_core.evaluate import evaluate_run

    seen = {}
    monkeypatch.setattr(evaluate, "evaluate_backbone", lambda *a, **kw: seen.update(kw) or {"knn_top1": 0.5})
    cfg = from_dict(RunConfig, {"method": "simclr", "out": str(tmp_path / "run"), "num_workers": 3,
                                "data": {"name": "shapes", "size": 16, "n": 32}})
    rt = Runtime(device=torch.device("cpu"), rank=0, world_size=1, distributed=False, bf16=False,
                 channels_last=False, owns_group=False)
    assert evaluate_run(cfg, nn.Identity(), rt) == {"knn_top1": 0.5}
    assert seen["num_workers"] == 3 and seen["device"] == torch.device("cpu") and seen["worker_init_fn"] is not None


def test_extract_features_with_workers_equals_the_main_process():
    data = _image_clusters(10, 3, seed=4)  # 30 "images"
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(18, 5))
    a = extract_features(backbone, data, batch_size=7, num_workers=0)
    b = extract_features(backbone, data, batch_size=7, num_workers=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


class _Augmented(torch.utils.data.Dataset):
    """Noise from the global RNG of the loading process, like an augmentation loaded without workers."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 0.5 * torch.randn(x.shape), y


class _Killed(Exception):
    pass


def test_linear_eval_resumes_from_its_checkpoint_with_the_uninterrupted_numbers(tmp_path):
    from mvssl_core.evaluate import linear_eval
    from mvssl_core.runstate import CheckpointError

    train, val = _Augmented(_image_clusters(16, 8, seed=1)), _image_clusters(8, 8, seed=2)
    kw = dict(n_classes=8, feature_dim=18, epochs=4, batch_size=32, lr=1.0, seed=0)
    whole = linear_eval(nn.Flatten(), train, val, checkpoint=tmp_path / "a.pt", **kw)
    plain = linear_eval(nn.Flatten(), train, val, **kw)
    assert whole == plain  # the checkpoint changes nothing
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert saved["epoch"] == 4 and saved["step"] == 16 and saved["settings"]["epochs"] == 4

    def die_after_epoch_2(row):
        if row["epoch"] == 2:
            raise _Killed

    ckpt = tmp_path / "b.pt"
    with pytest.raises(_Killed):
        linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, log=die_after_epoch_2, **kw)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    stale = tmp_path / ".b.pt.x1y2.tmp"  # left by a process killed while writing the checkpoint
    stale.write_bytes(b"half")
    rows = []
    resumed = linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, log=rows.append, **kw)
    assert [r["epoch"] for r in rows] == [3, 4]
    assert resumed == whole  # top-1, top-5, the last epoch's train loss and accuracy: exactly
    assert not stale.exists()
    # other settings: refused, naming the file and what differs; the encoder is left as it was
    encoder = nn.Sequential(nn.Flatten()).train()
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} was written with other settings \(epochs: 4 "
                                              r"there, 5 now; lr: 0.125 there, 0.25 now\)"):
        linear_eval(encoder, train, val, checkpoint=ckpt, **{**kw, "epochs": 5, "lr": 2.0})
    assert encoder.training
    with pytest.raises(CheckpointError, match=r"\(run_step: \(absent\) there, 3 now\)"):
        linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, checkpoint_settings={"run_step": 3}, **kw)
    for content in (b"not a checkpoint", b""):
        ckpt.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"linear-evaluation checkpoint {ckpt} cannot be read .*"
                                                  r"; delete it to start the protocol over$") as e:
            linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, **kw)
        assert "\n" not in str(e.value)
    torch.save({"format": "mvssl-linear-eval/1", "settings": {}}, ckpt)
    with pytest.raises(CheckpointError, match=r"lacks the fields \['epoch', 'step', 'head'"):
        linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, **kw)
    with pytest.raises(ValueError, match="checkpoint_every"):
        linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, checkpoint_every=0, **kw)


def test_linear_eval_command_resumes_an_interrupted_protocol(tmp_path, monkeypatch, capsys):
    """`linear-eval` killed after epoch 1 and run again ends with the numbers of an uninterrupted one; its
    checkpoint is deleted once the results hold them; a rerun with other settings is refused in one line."""
    import shutil
    import sys
    from pathlib import Path

    from mvssl_core import evaluate
    from mvssl_core.cli import main
    from mvssl_core.results import load_results
    from mvssl_core.runstate import RESULTS_NAME
    from mvssl_core.train import train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train import _cfg

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(_cfg("simclr", whole))
    shutil.copytree(whole, cut)
    argv = ["--epochs", "3", "--batch-size", "16", "--device", "cpu", "--quiet"]
    assert main(["linear-eval", str(whole), *argv]) == 0
    assert not (whole / evaluate.LINEAR_EVAL_CHECKPOINT).exists()

    save = evaluate._save_linear_eval_checkpoint

    def save_then_die(path, state):
        save(path, state)
        raise _Killed

    monkeypatch.setattr(evaluate, "_save_linear_eval_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        main(["linear-eval", str(cut), *argv])
    monkeypatch.setattr(evaluate, "_save_linear_eval_checkpoint", save)
    assert torch.load(cut / evaluate.LINEAR_EVAL_CHECKPOINT, weights_only=True)["epoch"] == 1
    assert "linear_eval" not in load_results(cut / RESULTS_NAME)["metrics"]
    capsys.readouterr()
    assert main(["linear-eval", str(cut), *argv[:1], "4", *argv[2:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written with other settings (epochs: 3 there, 4 now)" in err
    assert main(["linear-eval", str(cut), *argv]) == 0
    assert not (cut / evaluate.LINEAR_EVAL_CHECKPOINT).exists()
    a = load_results(whole / RESULTS_NAME)["metrics"]["linear_eval"]
    b = load_results(cut / RESULTS_NAME)["metrics"]["linear_eval"]
    for key in ("top1", "top5", "train_top1", "train_loss", "epochs", "n_train", "n_val"):
        assert a[key] == b[key], key


def _linear_eval_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank ``rank`` of 2 gloo processes: the protocol whole, then killed after epoch 2 and resumed. Only rank 0
    is given the checkpoint's real path (rank 1's does not exist): the state reaches it from rank 0."""
    import os

    import torch.distributed as torch_dist

    from mvssl_core.evaluate import linear_eval

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train, val = _Augmented(_image_clusters(16, 8, seed=1)), _image_clusters(8, 8, seed=2)
        kw = dict(n_classes=8, feature_dim=18, epochs=4, batch_size=32, lr=1.0, seed=0)
        whole = linear_eval(nn.Flatten(), train, val, **kw)
        ckpt = os.path.join(out_dir, "linear_eval.pt" if rank == 0 else "elsewhere.pt")

        def die_after_epoch_2(row):
            if row["epoch"] == 2:
                raise _Killed

        try:
            linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, log=die_after_epoch_2, **kw)
        except _Killed:
            pass
        rows = []
        resumed = linear_eval(nn.Flatten(), train, val, checkpoint=ckpt, log=rows.append, **kw)
        torch.save({"whole": whole, "resumed": resumed, "epochs": [r["epoch"] for r in rows]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


def test_linear_eval_resumes_exactly_on_two_processes(tmp_path):
    """Under a process group: every rank's augmentation RNG state saved by rank 0 and sent back on resume."""
    import torch.multiprocessing as mp

    mp.spawn(_linear_eval_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    saved = torch.load(tmp_path / "linear_eval.pt", weights_only=True)
    assert saved["epoch"] == 4 and saved["settings"]["world_size"] == 2 and len(saved["rng"]) == 2
    assert not torch.equal(saved["rng"][0], saved["rng"][1])  # each rank its own augmentations
    assert not (tmp_path / "elsewhere.pt").exists()
    for r in ranks:
        assert r["epochs"] == [3, 4]
        assert r["resumed"] == r["whole"] == ranks[0]["whole"] and r["whole"]["world_size"] == 2
