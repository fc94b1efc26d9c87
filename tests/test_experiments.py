"""The experiment scripts run end to end in --smoke mode and write results the loader accepts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from mvssl_core import ssl_runs
from mvssl_core.results import load_results

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CRITICS = ROOT / "scripts" / "experiments" / "train_critics.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(TRAIN_CRITICS), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"train_critics.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def smoke_paths(tmp_path_factory):
    """The smoke configuration, run twice (the second run checks determinism)."""
    folder = tmp_path_factory.mktemp("critics")
    paths = folder / "a.json", folder / "b.json"
    for path in paths:
        _run("--smoke", "--out", str(path))
    return paths


@pytest.fixture(scope="module")
def smoke_record(smoke_paths):
    return load_results(smoke_paths[0])


def test_smoke_record_has_provenance(smoke_record):
    prov = smoke_record["provenance"]
    assert "train_critics.py --smoke" in prov["command"]
    assert prov["hardware"]["threads"] == smoke_record["config"]["threads"]
    assert "correlated_gaussians" in smoke_record["dataset"]
    assert smoke_record["config"]["steps_per_stage"] < 20  # the smoke configuration, not the full one


def test_smoke_record_runs_and_curves(smoke_record):
    cfg = smoke_record["config"]
    runs = smoke_record["metrics"]["runs"]
    names = [r["name"] for r in runs]
    # every (objective, critic) pair at every batch size, ER, and the transformed family
    for k in cfg["batch_sizes"]:
        for objective in cfg["objectives"]:
            for critic in cfg["critics"]:
                assert f"{objective}/{critic}/k={k}/gaussian" in names
        assert f"er/gaussian_q/k={k}/gaussian" in names
    for family in cfg["transforms"]:
        assert any(r["family"] == family for r in runs)
    total = cfg["steps_per_stage"] * len(cfg["mis"])
    for run in runs:
        assert run["step"] == list(range(cfg["record_every"], total + 1, cfg["record_every"]))
        assert len(run["estimate"]) == len(run["step"]) == len(run["true_mi"])
        assert sorted(set(run["true_mi"])) == sorted(cfg["mis"])
        finite = [v for v in run["estimate"] if v is not None]
        assert finite and all(math.isfinite(v) for v in finite)
        assert [s["mi"] for s in run["stages"]] == list(cfg["mis"])
        if run["objective"] == "infonce":  # InfoNCE never exceeds log k, trained or not
            assert max(finite) <= math.log(run["batch_size"]) + 1e-5
        if run["objective"] == "er":
            assert len(run["entropy_kde"]) == len(run["reconstruction"]) == len(run["step"])


def test_deterministic(smoke_paths):
    runs_a, runs_b = (load_results(p)["metrics"]["runs"] for p in smoke_paths)
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]  # noqa: E731
    assert strip(runs_a) == strip(runs_b)


def test_bad_arguments_are_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, str(TRAIN_CRITICS), "--smoke", "--steps-per-stage", "0", "--out", str(tmp_path / "x.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0 and "steps-per-stage" in out.stderr
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------
# scripts/experiments/mi_not_enough.py (part 3 of the book)

MI_NOT_ENOUGH = ROOT / "scripts" / "experiments" / "mi_not_enough.py"


def test_mi_not_enough_smoke(tmp_path):
    out = tmp_path / "m.json"
    done = subprocess.run([sys.executable, str(MI_NOT_ENOUGH), "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = load_results(out)
    metrics, cfg = record["metrics"], record["config"]
    assert cfg["steps"] < 20 and "--smoke" in record["provenance"]["command"]
    assert metrics["log_k"] == math.log(cfg["batch_size"])
    assert {r["objective"] for r in metrics["runs"]} == set(cfg["objectives"])
    raw = metrics["raw_pixels"]["probe_test_top1"]
    for run in metrics["runs"]:
        curve = run["curve"]
        assert curve["step"][0] == 0 and curve["step"][-1] == cfg["steps"]
        # the flows start as the identity: the first probe is the raw-pixel probe, the log-det is 0
        assert curve["probe_test_top1"][0] == raw and curve["log_det"][0] == 0.0
        # an InfoNCE estimate never exceeds log k, on either split
        assert max(curve["infonce_train"] + curve["infonce_test"]) <= metrics["log_k"] + 1e-6
        assert all(len(v) == len(curve["step"]) for v in curve.values())


# ------------------------------------------------------------------------------------------------
# scripts/experiments/ssl_runs.py (the pre-training experiments of part 2; the code is mvssl_core.ssl_runs)

SSL_RUNS = ROOT / "scripts" / "experiments" / "ssl_runs.py"


def _ssl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(SSL_RUNS), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if check:
        assert out.returncode == 0, f"ssl_runs.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def ssl_smoke_dir(tmp_path_factory):
    """Every experiment in --smoke mode, one job (about half a minute on 2 cores)."""
    folder = tmp_path_factory.mktemp("ssl_smoke")
    _ssl("--smoke", "--jobs", "1", "--out-dir", str(folder))
    return folder


def test_ssl_runs_smoke_writes_one_valid_file_per_experiment(ssl_smoke_dir):
    from mvssl_core.experiments import load_experiment

    assert sorted(p.stem for p in ssl_smoke_dir.glob("*.json")) == sorted(ssl_runs.EXPERIMENTS)
    for name, make_runs in ssl_runs.EXPERIMENTS.items():
        scale = ssl_runs.scale_for(name, ssl_runs.Scale.smoke())  # its own data set where it has one
        smoke_scale = ssl_runs._scale_dict(scale)
        record = load_experiment(ssl_smoke_dir / f"{name}.json")  # validates every run
        cfg = record["config"]
        assert cfg["experiment"] == name and cfg["jobs"] == 1
        assert cfg["scale"] == smoke_scale  # the smoke scale, not the full one
        assert "ssl_runs.py --smoke --jobs 1" in record["provenance"]["command"]
        runs = record["metrics"]["runs"]
        expected = make_runs(scale)[: smoke_scale["max_runs"]]
        assert [r["name"] for r in runs] == [r.name for r in expected]
        for run in runs:
            assert run["steps"] == smoke_scale["steps"]
            assert run["config"]["model"]["kwargs"]["widths"] == smoke_scale["widths"]
            assert run["config"]["data"]["name"] == scale.data
            for key in ("knn_top1", "linear_top1"):
                assert 0.0 <= run["final"][key] <= 1.0, (name, run["name"], key)
        seeds = sorted({r["seed"] for r in runs})
        random_init = record["metrics"]["random_init"]
        assert [r["seed"] for r in random_init] == seeds  # the floor, for every seed of the runs
        assert all(0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["linear_top1"] <= 1.0 for r in random_init)
        assert record["metrics"]["wall_seconds"] > 0


def test_ssl_runs_smoke_is_deterministic(ssl_smoke_dir, tmp_path):
    from mvssl_core.experiments import load_experiment

    _ssl("batch", "--smoke", "--jobs", "2", "--out-dir", str(tmp_path))  # another --jobs: same numbers
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["batch.json"]
    a, b = (load_experiment(folder / "batch.json")["metrics"] for folder in (ssl_smoke_dir, tmp_path))
    assert [(r["name"], r["final"]) for r in a["runs"]] == [(r["name"], r["final"]) for r in b["runs"]]
    assert [r["history"] for r in a["runs"]] == [r["history"] for r in b["runs"]]
    assert a["random_init"] == b["random_init"]


def test_batch_runs_take_the_same_steps_in_two_learning_rate_regimes():
    """Full scale, configuration only: every batch size trains for the same 500 steps with the same
    warm-up fraction; the peak lr is the recipe's at the largest batch B (base x B/256) times b/B ("linear")
    or sqrt(b/B) ("sqrt"), and the largest batch is one run for both regimes."""
    import math

    from mvssl_core.config import RunConfig, from_dict

    s = ssl_runs.Scale()
    n_train = ssl_runs._n_train(s.data, s.data_root, s.size)
    runs = ssl_runs.batch(s)
    largest = max(s.batch_sizes)
    assert s.batch_steps >= 500
    for run in runs:
        cfg = from_dict(RunConfig, {**ssl_runs.run_config(run, s), "out": "unused"})
        base = {**ssl_runs.SHARED_OPTIM, **ssl_runs.RECIPES[run.family]["optim"]}["lr"]
        ratio = run.batch_size / largest
        factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "both": 1.0}[run.labels["regime"]] * largest / 256
        assert cfg.steps == s.batch_steps and not cfg.optim.scale_lr
        assert cfg.optim.lr == pytest.approx(base * factor)
        assert (run.labels["regime"] == "both") == (run.batch_size == largest)
        warmup = {**ssl_runs.SHARED_OPTIM, **ssl_runs.RECIPES[run.family]["optim"]}["warmup"]
        assert cfg.optim.warmup_epochs * (n_train // run.batch_size) == pytest.approx(warmup * s.batch_steps)
    per_family = len(s.batch_seeds) * (2 * (len(s.batch_sizes) - 1) + 1)
    assert len(runs) == 2 * len(ssl_runs.FAMILIES) * per_family
    assert len({r.name for r in runs}) == len(runs)


def test_recipes_resolve_run_relative_settings():
    """ "1 epoch" becomes its fraction of the run and "4 batches, at least K" a queue of max(4 x batch, K)
    rows, so that batch + queue can equipartition K prototypes at every batch size."""
    s = ssl_runs.Scale()
    run = next(r for r in ssl_runs.clustering(s) if r.family == "swav")
    cfg = ssl_runs.run_config(run, s)
    per_epoch = ssl_runs._n_train(s.data, s.data_root, s.size) // run.batch_size
    assert cfg["hyper"]["queue_length"] == max(4 * run.batch_size, run.labels["K"]) == 512
    for small in (r for r in ssl_runs.batch(s) if r.family == "swav"):
        hyper = ssl_runs.run_config(small, s)["hyper"]
        k = hyper["prototypes"]["n_prototypes"]
        assert hyper["queue_length"] == max(4 * small.batch_size, k)
        assert small.batch_size + hyper["queue_length"] >= k, small.name
    assert cfg["hyper"]["freeze_prototypes"] == pytest.approx(per_epoch / (run.epochs * per_epoch))
    dino = next(r for r in ssl_runs.dynamics(s) if r.family == "dino")
    assert ssl_runs.run_config(dino, s)["hyper"]["freeze_last_layer"] == pytest.approx(1 / dino.epochs)
    assert ssl_runs.run_config(dino, s)["hyper"]["head"]["bn"] is True


@pytest.mark.parametrize("args,needle", [
    (["nonsense"], "nonsense"),
    (["batch", "dynamic"], "unknown experiment"),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "-2"], "--jobs"),
])
def test_ssl_runs_refuses_bad_arguments(tmp_path, args, needle):
    out = _ssl(*args, "--smoke", "--out-dir", str(tmp_path), check=False)
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr
    assert not list(tmp_path.glob("*.json"))  # refused before running anything
