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
    from mvssl_core.train import build_eval_sets

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
