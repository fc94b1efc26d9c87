"""scripts/pretrain.sh, scripts/linear_eval.sh, scripts/pretrain.sbatch and scripts/configs/imagenet/.

On CPU, with no GPU and no SLURM: the scripts run for real with ``--cpu`` (2 gloo processes under
torchrun) on a tiny ImageFolder written here, with overrides that shrink the recipe (ConvNet, 16 px,
batch 8, 2 epochs of 24 images); the GPU and SLURM command lines are checked with ``--dry-run``
under a faked environment (``nvidia-smi`` and ``scontrol`` stand-ins on PATH, SLURM variables).
Every refusal has a test: one line on stderr, exit status 2, nothing launched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from mvssl_core.config import load_config, to_dict
from mvssl_core.results import load_results

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "scripts" / "pretrain.sh"
LINEAR_EVAL = REPO / "scripts" / "linear_eval.sh"
SBATCH = REPO / "scripts" / "pretrain.sbatch"
CONFIGS = REPO / "scripts" / "configs" / "imagenet"
METHODS = ["simclr", "simclr_er", "byol", "byol_er", "dino", "dino_er", "swav", "swav_er", "deepcluster",
           "deepcluster_er"]

# the recipe shrunk to seconds on CPU: 24 training images, batch 8, 2 epochs = 6 steps
TINY = ["model.backbone=convnet", "model.kwargs={widths: [8, 16]}", "data.size=16", "batch_size=8", "epochs=2",
        "num_workers=0", "log_every=1", "checkpoint_every=3"]
MLP = "{hidden: 16, out: 8}"
TINY_HEADS = {
    "simclr": [f"hyper.projector={MLP}"],
    "byol": [f"hyper.projector={MLP}", f"hyper.predictor={MLP}"],
    "dino": ["hyper.head={hidden: 16, bottleneck: 8, out: 16}", "data.view_kwargs.n_local=2"],
    "swav": [f"hyper.projector={MLP}", "hyper.prototypes={n_prototypes: 8}", "data.view_kwargs.n_local=2"],
    "deepcluster": [f"hyper.projector={MLP}", "hyper.prototypes={n_prototypes: 4, heads: 3}",
                    "data.view_kwargs.n_local=2", "data.view_kwargs.global_size=12"],
}
STEPS = 6


def tiny(method: str) -> list[str]:
    return TINY + TINY_HEADS[method.removesuffix("_er")]


# ------------------------------------------------------------------------------------------------
# helpers


def _env(tmp: Path, *, gpus: int | None = 0, slurm: dict | None = None, hostnames: str = "",
         gpu_mib: list[int] | None = None) -> dict:
    """The scripts' environment: no real GPU, SLURM or CUDA_VISIBLE_DEVICES, stand-ins on PATH.

    ``gpus``: the GPUs a fake ``nvidia-smi -L`` lists (None: no nvidia-smi at all).
    ``gpu_mib``: what ``nvidia-smi --query-gpu=memory.total`` answers, a line per GPU (None: it fails).
    ``hostnames``: what the fake ``scontrol show hostnames NODELIST`` prints, one name a line.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    bin_dir = Path(tempfile.mkdtemp(prefix="fakebin", dir=tmp))  # one per environment: runs may overlap
    smi = bin_dir / "nvidia-smi"
    if gpus is not None:
        lines = "".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})\\n" for i in range(gpus))
        memory = "".join(f"{m}\\n" for m in gpu_mib or [])
        query = (f'if [ "$1 $2" = "--query-gpu=memory.total --format=csv,noheader,nounits" ]; then printf "{memory}"; '
                 "exit 0; fi\n" if gpu_mib is not None else "")
        smi.write_text(f'#!/bin/sh\n{query}[ "$1" = "-L" ] || exit 9\nprintf "{lines}"\n' if gpus else
                       "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
        smi.chmod(0o755)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 9\n'
                        f'[ "$3" = "$SLURM_JOB_NODELIST" ] || exit 8\nprintf "{hostnames}"\n')
    scontrol.chmod(0o755)
    # a PATH where `nvidia-smi` can only be the fake one: the fakes, then the system folders without any real one
    system = [p for p in env.get("PATH", "/usr/bin:/bin").split(":") if p and not (Path(p) / "nvidia-smi").exists()]
    env["PATH"] = ":".join([str(bin_dir), *system])
    env["PYTHON"] = sys.executable
    env["OMP_NUM_THREADS"] = "1"
    env.update(slurm or {})
    return env


def _run(script: Path, args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _dry(script: Path, args: list[str], env: dict) -> list[str]:
    """The command a ``--dry-run`` prints, as argv."""
    args = list(args)
    cut = args.index("--") if "--" in args else len(args)
    proc = _run(script, [*args[:cut], "--dry-run", *args[cut:]], env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def _refused(proc: subprocess.CompletedProcess, script: str, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", "nothing may run or be printed on stdout"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _sets(argv: list[str]) -> dict[str, str]:
    """The ``--set key=value`` pairs of a command line."""
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    """A tiny ImageNet-layout folder: 24 training and 12 validation JPEGs of generated shapes, 6 classes."""
    from PIL import Image

    from mvssl_core.data import Shapes

    root = tmp_path_factory.mktemp("imagenet")
    shapes = Shapes(n=36, size=16, seed=0)
    for i in range(len(shapes)):
        image, label = shapes[i]
        folder = root / ("train" if i < 24 else "val") / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img_{i:03d}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def finished(imagefolder, workdir):
    """``finished(method)``: the folder of a complete tiny run of ``method`` (run once per module)."""
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = workdir / "full" / method
            env = _env(workdir)
            proc = _run(PRETRAIN, [method, imagefolder, out, "--cpu", "--results-dir", workdir / "results",
                                   "--", *tiny(method)], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[method] = out
        return done[method]

    return get


@pytest.fixture(scope="module")
def fake_run(workdir) -> Path:
    """A folder that looks like a finished run to linear_eval.sh's checks (for command lines and refusals)."""
    run = workdir / "fake_run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "results.json").write_text("{}")
    return run


# ------------------------------------------------------------------------------------------------
# the recipes


def _heads(method: str) -> dict:
    from mvssl_core import heads

    d = dataclasses.asdict
    return {
        "simclr": {"projector": d(heads.SIMCLR_PROJECTOR)},
        "byol": {"projector": d(heads.BYOL_PROJECTOR), "predictor": d(heads.BYOL_PREDICTOR)},
        "dino": {"head": {**d(heads.DINO_HEAD), "bn": True, "norm_last_layer": False}},  # DINO's ResNet-50 head
        "swav": {"projector": d(heads.SWAV_PROJECTOR), "prototypes": d(heads.SWAV_PROTOTYPES)},
        "deepcluster": {"projector": d(heads.DEEPCLUSTER_PROJECTOR), "prototypes": d(heads.DEEPCLUSTER_PROTOTYPES)},
    }[method.removesuffix("_er")]


@pytest.mark.parametrize("method", METHODS)
def test_config_is_the_paper_recipe(method):
    from mvssl_core.backbones import build_backbone
    from mvssl_core.methods import build_method
    from mvssl_core.optim import scaled_lr

    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(METHODS)
    cfg = load_config(CONFIGS / f"{method}.yaml")
    assert cfg.method == method
    assert cfg.model.backbone == "resnet50" and cfg.model.kwargs == {}
    assert cfg.epochs == 400 and cfg.steps is None
    assert cfg.batch_size == 4096 and cfg.accumulate == 1  # the GLOBAL batch
    assert cfg.data.name == "imagefolder" and cfg.data.size == 224
    assert cfg.optim.name == "lars" and cfg.optim.scale_lr and cfg.optim.warmup_epochs == 10
    peak = {"byol": 3.2}.get(method.removesuffix("_er"), 4.8)  # base 0.2 (BYOL) or 0.3, x 4096 / 256
    assert scaled_lr(cfg.optim.lr, cfg.batch_size) == pytest.approx(peak)
    for name, spec in _heads(method).items():  # the method's own heads, stated in full
        assert cfg.hyper[name] == spec, name
    # the hyper-parameters are those the method takes (built around a small encoder: the heads are full size)
    backbone, dim = build_backbone("convnet", widths=[8, 16])
    extra = {"dataset_size": 3000} if method.startswith("deepcluster") else {}
    build_method(method, backbone, dim, **cfg.hyper, **extra)
    # an ER variant changes the method and its ER keys, nothing else
    if method.endswith("_er"):
        base = to_dict(load_config(CONFIGS / f"{method.removesuffix('_er')}.yaml"))
        er = to_dict(cfg)
        er_keys = set(er["hyper"]) - set(base["hyper"])
        assert er_keys <= {"kappa", "estimator", "entropy_branch", "target_temperature"} and er_keys
        er["hyper"] = {k: v for k, v in er["hyper"].items() if k not in er_keys}
        assert {**er, "method": base["method"]} == base


def test_method_specific_schedules_in_the_recipes():
    get = lambda m: load_config(CONFIGS / f"{m}.yaml")  # noqa: E731
    assert get("byol").optim.weight_decay == 1.5e-6 and get("byol").hyper["base_momentum"] == 0.996
    assert get("simclr").hyper["temperature"] == 0.1
    dino = get("dino").hyper
    assert (dino["teacher_temperature_start"], dino["teacher_temperature_end"]) == (0.04, 0.07)
    assert dino["teacher_temperature_warmup"] * 400 == pytest.approx(30)  # the first 30 epochs
    assert dino["freeze_last_layer"] * 400 == pytest.approx(1)  # the first epoch
    swav = get("swav").hyper
    assert swav["queue_length"] == 0 and swav["freeze_prototypes"] * 400 == pytest.approx(1)
    assert get("swav").optim.final_lr * 4.8 == pytest.approx(0.0048)
    assert get("swav").data.view_kwargs == {"n_global": 2, "n_local": 6}


# ------------------------------------------------------------------------------------------------
# CPU runs: every method runs, checkpoints and writes a valid results file (2 gloo processes)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_pretrain_cpu_runs_checkpoints_and_writes_results(method, finished, imagefolder, workdir):
    from mvssl_core.runstate import load_checkpoint

    out = finished(method)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == STEPS and state["world_size"] == 2
    record = load_results(out / "results.json")  # validates the schema
    assert record["method"] == method and record["dataset"] == "imagefolder"
    assert record["config"]["data"]["root"] == str(imagefolder)
    assert record["config"]["batch_size"] == 8 and record["config"]["optim"]["name"] == "lars"
    assert record["metrics"]["steps"] == STEPS and record["metrics"]["history"]["step"] == list(range(1, STEPS + 1))
    assert record["provenance"]["command"].startswith("python -m mvssl_core pretrain --config")
    # the copy the book reads: results/imagenet/<run>.json, here under --results-dir
    published = workdir / "results" / f"{method}.json"
    assert load_results(published) == record
    assert yaml.safe_load((out / "config.yaml").read_text())["results_file"] == str(published)


@pytest.mark.slow
def test_pretrain_resumes_after_preemption_exactly_then_stops(imagefolder, workdir, finished):
    """Stopped after 3 of 6 steps, run again: it continues from step 3 and ends where an uninterrupted run does."""
    from mvssl_core.runstate import load_checkpoint

    method = "byol_er"  # EMA teacher, predictor, KDE entropy over the global batch
    out, results_dir = workdir / "preempted" / method, workdir / "results_preempted"
    env = _env(workdir)
    args = [method, imagefolder, out, "--cpu", "--results-dir", results_dir, "--", *tiny(method)]
    first = _run(PRETRAIN, ["--stop-after", "3", *args], env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3 and not (out / "results.json").exists()

    second = _run(PRETRAIN, args, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {out}/checkpoint.pt" in second.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # continued, not restarted
    resumed = load_checkpoint(out / "checkpoint.pt")
    straight = load_checkpoint(finished(method) / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == STEPS
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert load_results(results_dir / f"{method}.json")["metrics"]["steps"] == STEPS

    # a finished run is left alone
    mtime = (out / "results.json").stat().st_mtime_ns
    third = _run(PRETRAIN, args, env)
    assert third.returncode == 0 and "nothing to do" in third.stderr
    assert (out / "results.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_linear_eval_cpu_writes_top1_and_top5(imagefolder, workdir, finished):
    out = finished("simclr")
    published = workdir / "results" / "simclr.json"
    before = load_results(out / "results.json")
    proc = _run(LINEAR_EVAL, [out, imagefolder, "--cpu", "--epochs", "2", "--batch-size", "8", "--",
                              "--set", "num_workers=0", "--quiet"], _env(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = load_results(out / "results.json")
    probe = record["metrics"]["linear_eval"]
    assert 0.0 <= probe["top1"] <= probe["top5"] <= 1.0
    assert probe["epochs"] == 2 and probe["batch_size"] == 8 and probe["world_size"] == 2
    assert probe["n_train"] == 24 and probe["n_val"] == 12 and probe["data_root"] == str(imagefolder)
    assert probe["provenance"]["command"].startswith("python -m mvssl_core linear-eval")
    # the pre-training record is kept; the book's copy gets the same numbers
    assert {k: v for k, v in record["metrics"].items() if k != "linear_eval"} == before["metrics"]
    assert load_results(published)["metrics"]["linear_eval"] == probe
    assert json.loads(proc.stdout.strip().splitlines()[-1])["top1"] == probe["top1"]


# ------------------------------------------------------------------------------------------------
# command lines: one GPU node, a SLURM job of several nodes


def _recipe_args(imagefolder: Path, workdir: Path, method: str = "simclr_er") -> list:
    return [method, imagefolder, workdir / "dry" / method, "--results-dir", workdir / "dry_results"]


def test_one_node_uses_every_gpu_found(imagefolder, workdir):
    argv = _dry(PRETRAIN, _recipe_args(imagefolder, workdir), _env(workdir, gpus=8))
    cut = argv.index("mvssl_core")
    assert argv[:cut + 2] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                              "--nproc_per_node=8", "-m", "mvssl_core", "pretrain"]
    assert argv[cut + 2:cut + 4] == ["--config", str(CONFIGS / "simclr_er.yaml")]
    sets = _sets(argv)
    assert sets["method"] == "simclr_er" and sets["data.name"] == "imagefolder"
    assert sets["data.root"] == str(imagefolder) and sets["out"] == str(workdir / "dry" / "simclr_er")
    assert sets["results_file"] == str(workdir / "dry_results" / "simclr_er.json")
    assert "device" not in sets and "--resume" not in argv  # NCCL on the GPUs; a fresh run

    # CUDA_VISIBLE_DEVICES limits the count; --nproc takes fewer; overrides come last, as given
    env = _env(workdir, gpus=8)
    env["CUDA_VISIBLE_DEVICES"] = "2,3,5,7"
    assert "--nproc_per_node=4" in _dry(PRETRAIN, _recipe_args(imagefolder, workdir), env)
    argv = _dry(PRETRAIN, [*_recipe_args(imagefolder, workdir), "--nproc", "2", "--", "accumulate=2",
                           "optim.lr=0.2"], _env(workdir, gpus=8))
    assert "--nproc_per_node=2" in argv and argv[-4:] == ["--set", "accumulate=2", "--set", "optim.lr=0.2"]
    # the default run folder and results name
    argv = _dry(PRETRAIN, ["byol", imagefolder], _env(workdir, gpus=8))
    assert _sets(argv)["out"] == str(REPO / "runs" / "imagenet" / "byol")
    assert _sets(argv)["results_file"] == str(REPO / "results" / "imagenet" / "byol.json")


def test_cpu_runs_gloo_processes(imagefolder, workdir):
    argv = _dry(PRETRAIN, [*_recipe_args(imagefolder, workdir), "--cpu", "--", "batch_size=8"], _env(workdir))
    assert "--nproc_per_node=2" in argv and _sets(argv)["device"] == "cpu"
    argv = _dry(PRETRAIN, [*_recipe_args(imagefolder, workdir), "--cpu", "--nproc", "4", "--", "batch_size=8"],
                _env(workdir))
    assert "--nproc_per_node=4" in argv


def test_an_existing_checkpoint_means_resume(imagefolder, workdir):
    out = workdir / "dry_resume"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    argv = _dry(PRETRAIN, ["simclr", imagefolder, out, "--cpu", "--", "batch_size=8"], _env(workdir))
    assert "--resume" in argv


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_GPUS_ON_NODE": "8",
         "MASTER_PORT": "29400"}
HOSTS = "gpu07\\ngpu08\\ngpu09\\ngpu10\\n"


@pytest.mark.parametrize("script", ["pretrain", "linear_eval"])
def test_slurm_job_of_several_nodes_runs_srun_and_torchrun(script, imagefolder, workdir, fake_run):
    env = _env(workdir, gpus=None, slurm=SLURM, hostnames=HOSTS)  # no nvidia-smi: SLURM says 8 GPUs per node
    if script == "pretrain":
        argv = _dry(PRETRAIN, _recipe_args(imagefolder, workdir), env)
    else:
        argv = _dry(LINEAR_EVAL, [fake_run, imagefolder], env)
    cut = argv.index("mvssl_core")
    assert argv[:cut + 1] == [
        "srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        sys.executable, "-m", "torch.distributed.run", "--nnodes=4", "--nproc_per_node=8",
        "--rdzv_id=4242", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu07:29400", "-m", "mvssl_core",
    ]
    assert argv[cut + 1] == ("pretrain" if script == "pretrain" else "linear-eval")
    assert "--standalone" not in argv


def test_slurm_details(imagefolder, workdir):
    # GPUs per node from nvidia-smi when SLURM does not say; SLURM_JOB_NUM_NODES as well as SLURM_NNODES
    slurm = {k: v for k, v in SLURM.items() if k not in ("SLURM_GPUS_ON_NODE", "SLURM_NNODES", "MASTER_PORT")}
    slurm["SLURM_JOB_NUM_NODES"] = "2"
    argv = _dry(PRETRAIN, _recipe_args(imagefolder, workdir), _env(workdir, gpus=4, slurm=slurm, hostnames=HOSTS))
    assert "--nnodes=2" in argv and "--nproc_per_node=4" in argv and "--rdzv_endpoint=gpu07:29500" in argv
    # a one-node allocation is a plain one-node run
    argv = _dry(PRETRAIN, _recipe_args(imagefolder, workdir),
                _env(workdir, gpus=None, slurm={**SLURM, "SLURM_NNODES": "1"}, hostnames=HOSTS))
    assert argv[0] == sys.executable and "--standalone" in argv and "--nproc_per_node=8" in argv
    # 3 nodes x 8 GPUs: 4096 does not divide over 24 processes
    proc = _run(PRETRAIN, [*_recipe_args(imagefolder, workdir), "--dry-run"],
                _env(workdir, gpus=None, slurm={**SLURM, "SLURM_NNODES": "3"}, hostnames=HOSTS))
    _refused(proc, "pretrain.sh", "global batch 4096", "24 processes (3 node(s) x 8)")


def test_sbatch_example_launches_pretrain_once_per_job():
    text = SBATCH.read_text()
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    directives = [line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--nodes=4" in directives and "--ntasks-per-node=1" in directives and "--gpus-per-node=8" in directives
    assert "--requeue" in directives  # pre-empted jobs come back and resume
    assert "--signal=B:USR1@300" in directives  # to the batch shell, 300 s before the time limit
    # exec: the batch shell becomes pretrain.sh, which traps the signal (checkpoint, requeue)
    assert 'exec scripts/pretrain.sh "$METHOD" "$DATA_DIR" "$OUT_DIR"' in text
    assert os.access(SBATCH, os.X_OK) and os.access(PRETRAIN, os.X_OK) and os.access(LINEAR_EVAL, os.X_OK)


def test_pretrain_sh_asks_slurm_for_a_warning_and_runs_on_old_bash():
    """`sbatch scripts/pretrain.sh ...` works too: its #SBATCH lines come before the first command (sbatch reads
    no further) and are not part of --help; no bare "${OVERRIDES[@]}" (an unbound variable under set -u in
    bash <= 4.3 when the array is empty). Signals themselves: tests/test_preempt.py."""
    subprocess.run(["bash", "-n", str(PRETRAIN)], check=True)
    lines = PRETRAIN.read_text().splitlines()
    header = lines[:next(i for i, line in enumerate(lines) if line and not line.startswith("#"))]
    directives = [line.split()[1] for line in header if line.startswith("#SBATCH")]
    assert directives == ["--signal=B:USR1@300", "--requeue"]
    text = "\n".join(lines)
    assert "trap 'stop USR1' USR1" in text and "trap 'stop TERM' TERM" in text and "scontrol requeue" in text
    assert text.count('"${OVERRIDES[@]}"') == text.count('${OVERRIDES[@]+"${OVERRIDES[@]}"}') >= 3
    proc = subprocess.run([str(PRETRAIN), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "SIGUSR1" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("SBATCH", "#SBATCH"))]


@pytest.mark.parametrize("script, arrays", [("launch_lib.sh", ["ids"]), ("linear_eval.sh", ["PROTOCOL", "EXTRA"]),
                                            ("pretrain.sh", ["OVERRIDES"])])
def test_arrays_that_may_be_empty_are_expanded_guarded(script, arrays):
    """bash <= 4.3 treats "${a[@]}" of an empty array as unbound under set -u: such arrays (CUDA_VISIBLE_DEVICES="",
    no extra flags, no overrides) are expanded as ${a[@]+"${a[@]}"}."""
    text = (PRETRAIN.parent / script).read_text()
    for name in arrays:
        bare = text.count(f'"${{{name}[@]}}"') - text.count(f'${{{name}[@]+"${{{name}[@]}}"}}')
        assert bare == 0, f"{script}: {bare} unguarded expansion(s) of {name}"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("SLURM_GPUS_ON_NODE", None)
    out = subprocess.run(["bash", "-c", f"set -u; source {PRETRAIN.parent / 'launch_lib.sh'}; count_gpus"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_help():
    for script in (PRETRAIN, LINEAR_EVAL):
        proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "DATA_DIR" in proc.stdout and "--cpu" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_check_refuses_without_a_gpu(tmp_path):
    """scripts/check_gpu.sh measures the CUDA path: without a GPU it says so and exits 2, having run nothing."""
    script = PRETRAIN.parent / "check_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # it parses
    proc = subprocess.run(["bash", str(script), str(tmp_path / "logs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
    assert not list((tmp_path / "logs").iterdir())  # no part ran


# ------------------------------------------------------------------------------------------------
# refusals: one line, exit status 2, nothing launched


def _bad_folders(root: Path) -> dict[str, tuple[Path, str]]:
    from PIL import Image

    cases = {}
    cases["missing"] = (root / "nope", "does not exist")
    (root / "file").write_text("x")
    cases["a file"] = (root / "file", "is not a folder")
    (root / "no_train" / "val" / "c").mkdir(parents=True)
    cases["no train split"] = (root / "no_train", "has no 'train' folder")
    flat = root / "flat" / "train"
    flat.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "a.jpg")
    cases["images without class folders"] = (root / "flat", "holds no class sub-folder")
    empty = root / "empty"
    for split in ("train", "val"):
        (empty / split / "c").mkdir(parents=True)
        (empty / split / "c" / "notes.txt").write_text("x")
    cases["class folders without images"] = (empty, "holds no image")
    no_val = root / "no_val" / "train" / "c"
    no_val.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(no_val / "a.jpg")
    cases["no val split"] = (root / "no_val", "has no 'val' folder")
    return cases


@pytest.mark.parametrize("case", ["missing", "a file", "no train split", "images without class folders",
                                  "class folders without images", "no val split"])
def test_refuses_a_data_dir_that_is_not_an_imagefolder(case, tmp_path, fake_run):
    data, needle = _bad_folders(tmp_path)[case]
    env = _env(tmp_path)
    _refused(_run(PRETRAIN, ["simclr", data, tmp_path / "out", "--cpu"], env), "pretrain.sh", str(data), needle,
             "ImageFolder layout")
    _refused(_run(LINEAR_EVAL, [fake_run, data, "--cpu"], env), "linear_eval.sh", needle)
    assert not (tmp_path / "out").exists()


def test_refuses_a_batch_that_does_not_divide_over_the_processes(imagefolder, tmp_path, fake_run):
    env = _env(tmp_path, gpus=8)
    _refused(_run(PRETRAIN, ["simclr", imagefolder, tmp_path / "o", "--cpu", "--nproc", "3", "--", "batch_size=8"],
                  env), "pretrain.sh", "global batch 8", "3 processes", "multiple of 3")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, tmp_path / "o", "--nproc", "6"], env),  # 4096 over 6 GPUs
             "pretrain.sh", "global batch 4096", "6 processes")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, tmp_path / "o", "--", "accumulate=3"], env),  # 8 GPUs x 3
             "pretrain.sh", "accumulate 3", "multiple of 24")
    _refused(_run(LINEAR_EVAL, [fake_run, imagefolder, "--cpu", "--nproc", "3", "--batch-size", "8"], env),
             "linear_eval.sh", "global batch 8", "3 processes")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["nvidia-smi lists none", "no nvidia-smi", "CUDA_VISIBLE_DEVICES empty"])
def test_refuses_to_run_without_gpu_unless_cpu(how, imagefolder, tmp_path, fake_run):
    env = _env(tmp_path, gpus={"nvidia-smi lists none": 0, "no nvidia-smi": None}.get(how, 4))
    if how == "CUDA_VISIBLE_DEVICES empty":
        env["CUDA_VISIBLE_DEVICES"] = ""
    _refused(_run(PRETRAIN, ["simclr", imagefolder, tmp_path / "o"], env), "pretrain.sh", "no GPU found", "--cpu")
    _refused(_run(LINEAR_EVAL, [fake_run, imagefolder], env), "linear_eval.sh", "no GPU found")


def test_refuses_other_bad_arguments(imagefolder, tmp_path, fake_run):
    env = _env(tmp_path, gpus=8)
    out = tmp_path / "o"
    _refused(_run(PRETRAIN, ["mocov3", imagefolder, out], env), "pretrain.sh", "unknown METHOD 'mocov3'", "simclr_er")
    _refused(_run(PRETRAIN, ["simclr"], env), "pretrain.sh", "usage")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--frobnicate"], env), "pretrain.sh", "unknown option")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--", "optim.lr"], env), "pretrain.sh", "key=value")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--", "optim.lrr=0.1"], env), "pretrain.sh",
             "unknown config key 'optim.lrr'")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--nproc", "9"], env), "pretrain.sh", "8 GPUs")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--nproc", "0"], env), "pretrain.sh", "--nproc")
    _refused(_run(PRETRAIN, ["simclr", imagefolder, out, "--config", tmp_path / "none.yaml"], env), "pretrain.sh",
             "not found")
    assert not out.exists()
    # linear evaluation needs a finished run
    _refused(_run(LINEAR_EVAL, [tmp_path / "nope", imagefolder], env), "linear_eval.sh", "does not exist")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    _refused(_run(LINEAR_EVAL, [unfinished, imagefolder], env), "linear_eval.sh", "no checkpoint.pt")
    (unfinished / "checkpoint.pt").write_bytes(b"")
    _refused(_run(LINEAR_EVAL, [unfinished, imagefolder], env), "linear_eval.sh", "has not finished")


# ------------------------------------------------------------------------------------------------
# the per-GPU batch (mvssl_core/memory_plan.py)


def _accumulate(argv: list[str]) -> str | None:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1])
              if a == "--set" and argv[i + 1].startswith("accumulate=")]
    assert len(values) <= 1, argv
    return values[0] if values else None


@pytest.mark.parametrize("method, gpu_mib, expected", [
    ("simclr", [81559] * 8, None),   # 512 x 84 MiB = 42 GiB <= 75 % of 80 GB: the recipe's accumulate 1
    ("dino", [81559] * 8, "2"),      # 512 x 130 MiB = 65 GiB > 60 GiB
    ("simclr", [81559] * 7 + [40960], "2"),  # the smallest GPU counts
    ("dino", [40960] * 8, "4"),
])
def test_gpu_run_accumulates_to_fit_the_gpus_memory(method, gpu_mib, expected, imagefolder, workdir):
    env = _env(workdir, gpus=8, gpu_mib=gpu_mib)
    args = _recipe_args(imagefolder, workdir, method)
    proc = _run(PRETRAIN, [*args, "--dry-run"], env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout.strip())
    assert _accumulate(argv) == expected
    if expected:
        assert f"accumulate={expected} ({4096 // 8 // int(expected)} samples per GPU at a time" in proc.stderr
        assert "the global batch stays 4096" in proc.stderr


def test_accumulate_on_the_command_line_is_kept_and_unknown_memory_keeps_the_recipe(imagefolder, workdir):
    env = _env(workdir, gpus=8, gpu_mib=[40960] * 8)
    argv = _dry(PRETRAIN, [*_recipe_args(imagefolder, workdir, "dino"), "--", "accumulate=1"], env)
    assert _accumulate(argv) == "1"
    proc = _run(PRETRAIN, [*_recipe_args(imagefolder, workdir, "dino"), "--dry-run"], _env(workdir, gpus=8), timeout=60)
    assert proc.returncode == 0 and _accumulate(shlex.split(proc.stdout)) is None
    assert "GPU memory unknown" in proc.stderr
    # a backbone without a measurement: no plan, said, the recipe's accumulate
    proc = _run(PRETRAIN, [*_recipe_args(imagefolder, workdir, "dino"), "--dry-run", "--", "model.backbone=resnet18"],
                env, timeout=60)
    assert proc.returncode == 0 and _accumulate(shlex.split(proc.stdout)) is None
    assert "no memory plan (model.backbone: no activation measurement for 'resnet18'" in proc.stderr


def test_resumed_gpu_run_keeps_its_own_accumulate(imagefolder, workdir):
    """Started with accumulate 4 on 40 GB GPUs, resumed on 80 GB ones: the run's 4, not a new plan (a changed
    accumulate would be refused by --resume: it changes the result)."""
    out = workdir / "resume_accum"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    (out / "config.yaml").write_text("method: dino\naccumulate: 4\n")
    argv = _dry(PRETRAIN, ["dino", imagefolder, out, "--results-dir", workdir / "dry_results"],
                _env(workdir, gpus=8, gpu_mib=[81559] * 8))
    assert _accumulate(argv) == "4" and "--resume" in argv
