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
