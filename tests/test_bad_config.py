"""Bad configurations and command lines end in one clear error, before anything runs (issue 15, items 4, 7, 8).

- every float key of the config dataclasses (found by walking them) refuses NaN and inf, by name;
- no string becomes a number or a boolean, no boolean a number; YAML 1.2's booleans and floats;
- a YAML alias bomb or a recursive alias is refused at once;
- every numeric flag is range-checked at argument parsing (one ``error: argument --x`` line, exit 2);
- a diverging run ends in the one-line "lower optim.lr" message, and no checkpoint holds a non-finite state;
- the process group is initialised with a bounded timeout.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from mvssl_core import config as config_mod
from mvssl_core import dist
from mvssl_core import train as train_mod
from mvssl_core.cli import main
from mvssl_core.config import (
    ConfigError,
    RunConfig,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    save_config,
    validate,
)
from mvssl_core.runstate import CHECKPOINT_NAME, RESULTS_NAME, load_checkpoint
from mvssl_core.train import DivergenceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# NaN and inf in every float key


def _float_keys(cls: type = RunConfig, where: str = "") -> list[str]:
    """Dotted names of every field of ``cls`` (and of its nested dataclasses) whose annotation admits a float."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, f"{where}{name}.")
        elif tp is float or float in typing.get_args(tp):
            keys.append(f"{where}{name}")
    return keys


FLOAT_KEYS = _float_keys()


def test_the_walk_finds_the_float_keys():
    assert {"optim.lr", "optim.final_lr", "optim.momentum", "optim.weight_decay", "optim.warmup_epochs",
            "probe.lr", "eval.temperature"} <= set(FLOAT_KEYS)


def _replace(cfg: RunConfig, key: str, value: object) -> RunConfig:
    *path, last = key.split(".")
    if not path:
        return dataclasses.replace(cfg, **{last: value})
    part = getattr(cfg, path[0])
    return dataclasses.replace(cfg, **{path[0]: dataclasses.replace(part, **{last: value})})


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_nan_and_inf(key, text):
    with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number, got (nan|inf|-inf)$"):
        load_config(None, [f"{key}={text}"])
    # a configuration built in code is refused by validate as well
    with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number"):
        validate(_replace(RunConfig(), key, float(text.replace(".", ""))))


def test_nan_final_lr_is_refused_before_the_run(tmp_path, capsys):
    # before: optim.final_lr=.nan trained the whole run and failed only when writing results.json
    assert main([*_tiny(tmp_path), "--set", "optim.final_lr=.nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'optim.final_lr' must be a finite number, got nan" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("hyper.temperature=.nan", "hyper.temperature"),
        ("hyper.projector={hidden: 16, out: .inf}", "hyper.projector.out"),
        ("model.kwargs={widths: [8, -.inf]}", r"model.kwargs.widths\[1\]"),
        ("data.view_kwargs.scale=[.nan, 1.0]", r"data.view_kwargs.scale\[0\]"),
    ],
)
def test_non_finite_floats_inside_the_dicts_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number"):
        load_config(None, [override])


# ------------------------------------------------------------------------------------------------
# no coercion; YAML 1.2 booleans and floats


@pytest.mark.parametrize(
    "override, match",
    [
        ('optim.lr="0.1"', r"'optim.lr' must be float, got str \('0.1'\); write the number without quotes"),
        ("optim.lr=true", r"'optim.lr' must be float, got bool"),
        ("eval.k=2.0", r"'eval.k' must be int, got float"),
        ("eval.k=false", r"'eval.k' must be int, got bool"),
        ('eval.k="20"', r"'eval.k' must be int, got str"),
        ("eval.knn=no", r"'eval.knn' must be bool, got str \('no'\); write true or false"),
        ("eval.knn=yes", r"'eval.knn' must be bool, got str \('yes'\); write true or false"),
        ("eval.knn=off", r"'eval.knn' must be bool, got str \('off'\)"),
        ("eval.knn=1", r"'eval.knn' must be bool, got int"),
        ('progress="true"', r"'progress' must be bool, got str"),
        ("optim.lr=1" + "0" * 400, r"'optim.lr' must be a finite number, got inf"),  # an int beyond a float
        ("steps=1" + "0" * 30, r"'steps' must fit in 64 bits"),
        ("seed=1180591620717411303424", r"'seed' must fit in 64 bits"),
        ("seed=4294967296", r"'seed' must be <= 4294967295"),
        ("seed=-1", r"'seed' must be >= 0"),
        ("data.size=1000000000", r"'data.size' must be <= 4096"),
        ("optim.lr=1.0e38", r"'optim.lr' must be <= 1000000.0"),  # AdamW's step overflowed float32
        ("probe.lr=1.0e7", r"'probe.lr' must be <= 1000000.0"),
    ],
)
def test_wrong_types_and_ranges_are_refused_by_name(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_yaml_12_booleans_and_floats():
    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=5e-4", "probe.lr=1", "data.split=no",
                             "data.root=off", "eval.knn=false", "eval.linear=True", "seed=4294967295"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0005  # YAML 1.1 read these as strings
    assert cfg.probe.lr == 1.0 and isinstance(cfg.probe.lr, float)  # the one conversion: int -> float
    assert cfg.data.split == "no" and cfg.data.root == "off"  # YAML 1.1 read these as false
    assert cfg.eval.knn is False and cfg.eval.linear is True and cfg.seed == 2**32 - 1


def test_saved_config_reads_back_the_same(tmp_path):
    cfg = load_config(None, ['data.split="1e-3"', 'data.root="no"', 'data.eval_split="1.5"', "optim.lr=1e-6"])
    path = save_config(cfg, tmp_path / "c.yaml")
    import yaml

    assert from_dict(RunConfig, read_yaml(path)) == cfg
    assert from_dict(RunConfig, yaml.safe_load(path.read_text())) == cfg  # and with YAML 1.1 readers
    assert dump_yaml({"a": "yes"}) == "a: 'yes'\n"


# ------------------------------------------------------------------------------------------------
# YAML alias bombs


def _bomb(levels: int = 9) -> str:
    lines = ["method: simclr", "hyper:", "  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_file_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    with pytest.raises(ConfigError, match=rf"config file {path} is refused: its aliases expand to more than"):
        read_yaml(path)


def test_alias_bomb_does_not_hang_the_command_line(tmp_path):
    # before: --print-config expanded 9**10 items (hours); the subprocess's timeout catches a hang
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    proc = subprocess.run([sys.executable, "-m", "mvssl_core", "pretrain", "--config", str(path), "--print-config"],
                          cwd=REPO, capture_output=True, text=True, timeout=20)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert str(path) in err[0] and "aliases expand" in err[0] and proc.stdout == ""


def test_recursive_alias_and_bomb_override_are_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("method: simclr\nhyper: &h\n  self: *h\n")
    with pytest.raises(ConfigError, match=rf"config file {path} is refused: an alias refers to a node that contains"):
        read_yaml(path)
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(ConfigError, match=r"override 'hyper.x=.*the value is refused: its aliases expand"):
        parse_override("hyper.x={" + ", ".join(levels) + "}")


def test_ordinary_aliases_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: simclr\noptim: {lr: &lr 0.2}\nprobe: {lr: *lr}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.2 and cfg.probe.lr == 0.2


# ------------------------------------------------------------------------------------------------
# numeric flags: refused at argument parsing, in one line


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["pretrain", "--method", "simclr", "--print-config", "--seed", "1180591620717411303424"], "--seed"),
        (["pretrain", "--method", "simclr", "--print-config", "--seed", "-1"], "--seed"),
        (["pretrain", "--method", "simclr", "--print-config", "--seed", "4294967296"], "--seed"),
        (["pretrain", "--method", "simclr", "--print-config", "--size", "0"], "--size"),
        (["pretrain", "--method", "simclr", "--print-config", "--size", "-1"], "--size"),
        (["pretrain", "--method", "simclr", "--print-config", "--size", "1000000000"], "--size"),
        (["pretrain", "--method", "simclr", "--print-config", "--steps", "0"], "--steps"),
        (["pretrain", "--method", "simclr", "--print-config", "--epochs", "0"], "--epochs"),
        (["pretrain", "--method", "simclr", "--print-config", "--batch-size", "1"], "--batch-size"),
        (["pretrain", "--method", "simclr", "--print-config", "--accumulate", "0"], "--accumulate"),
        (["pretrain", "--method", "simclr", "--print-config", "--num-workers", "-1"], "--num-workers"),
        (["pretrain", "--method", "simclr", "--print-config", "--stop-after", "0"], "--stop-after"),
        (["pretrain", "--method", "simclr", "--print-config", "--steps", "many"], "--steps"),
        (["evaluate", "--checkpoint", "{tmp}/missing.pt", "--size", "0"], "--size"),
        (["linear-eval", "{tmp}/missing", "--epochs", "0"], "--epochs"),
        (["linear-eval", "{tmp}/missing", "--lr", "-0.1"], "--lr"),
        (["linear-eval", "{tmp}/missing", "--lr", "nan"], "--lr"),
        (["linear-eval", "{tmp}/missing", "--lr", "inf"], "--lr"),
        (["linear-eval", "{tmp}/missing", "--lr", "fast"], "--lr"),
        (["linear-eval", "{tmp}/missing", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_numeric_flags_are_refused_at_parsing_in_one_line(argv, flag, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:  # before the checkpoint, the run folder or any data is looked at
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert f"error: argument {flag}: " in err[0]


def test_flags_at_their_bounds_are_accepted(capsys):
    assert main(["pretrain", "--method", "simclr", "--print-config", "--seed", "4294967295", "--size", "4096", "--steps", "1",
                 "--batch-size", "2", "--num-workers", "0", "--print-config"]) == 0
    printed = config_mod._load_yaml(capsys.readouterr().out, "the printed config")
    assert printed["seed"] == 2**32 - 1 and printed["data"]["size"] == 4096 and printed["batch_size"] == 2


# ------------------------------------------------------------------------------------------------
# divergence: one line, no checkpoint of a non-finite state


def _tiny(tmp_path: Path, method: str = "simclr") -> list[str]:
    hyper = ["--set", "hyper.projector={hidden: 16, out: 8}"]
    if method == "dino":
        hyper = ["--set", "hyper.head={hidden: 16, bottleneck: 8, out: 16}", "--set", "data.view_kwargs={n_local: 2}"]
    return ["pretrain", "--method", method, "--data", "shapes", "--size", "16", "--backbone", "convnet",
            "--steps", "3", "--batch-size", "8", "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "run"),
            "--set", "data.n=32", "--set", "model.kwargs={widths: [8, 16]}", "--set", "optim.name=sgd",
            "--set", "eval.knn=false", "--set", "eval.linear=false", *hyper]


@pytest.mark.parametrize(
    "method, extra, match",
    [
        # before: the projector's BatchNorm statistics became inf while the loss stayed finite, and the run
        # exited 0 with them in its checkpoint
        ("simclr", ["--set", "model.kwargs={widths: [8, 16], norm: none}"],
         "simclr: the model's state is not finite at step 3 (epoch 0): model.projector.1.running_var"),
        # before: an estimator's input check (zero rows under the sphere rule) escaped as a traceback
        ("dino", [], "dino: training diverged by step 2 (epoch 0): z1 has 8 row(s) of norm 0"),
    ],
)
def test_diverging_run_ends_in_one_line(method, extra, match, tmp_path, capsys):
    assert main([*_tiny(tmp_path, method), "--set", "optim.lr=1.0e6", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert match in err[0] and "lower optim.lr" in err[0]
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists() and not (tmp_path / "run" / RESULTS_NAME).exists()


def test_non_finite_batchnorm_statistics_are_never_checkpointed(tmp_path, monkeypatch):
    # the loss stays finite (training-mode BatchNorm uses the batch's statistics) while the running
    # statistics are inf: before, the run exited 0 with them in its checkpoint
    build = train_mod.build_model

    def poisoned(*args, **kwargs):
        method = build(*args, **kwargs)
        bn = next(m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d))
        calls = []

        def hook(module, _inputs):
            calls.append(1)
            if len(calls) > 1:  # from the second forward (step 2) on; the update keeps it inf
                module.running_var.fill_(math.inf)

        bn.register_forward_pre_hook(hook)
        return method

    monkeypatch.setattr(train_mod, "build_model", poisoned)
    values = {"method": "simclr", "hyper": {"projector": {"hidden": 16, "out": 8}},
              "data": {"name": "shapes", "size": 16, "n": 32}, "model": {"backbone": "convnet",
              "kwargs": {"widths": [8, 16]}}, "optim": {"name": "sgd", "lr": 0.1}, "batch_size": 8, "steps": 3,
              "num_workers": 0, "checkpoint_every": 1, "progress": False, "out": str(tmp_path / "run"),
              "eval": {"knn": False, "linear": False}}
    cfg = load_config(None, base=values)
    with pytest.raises(DivergenceError, match=r"state is not finite at step 2 .*running_var.*lower optim.lr"):
        train_mod.train(cfg)
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)  # step 1's, intact
    assert int(state["step"]) == 1
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / RESULTS_NAME).exists()


# ------------------------------------------------------------------------------------------------
# the process group's timeout


@pytest.mark.parametrize("env, seconds", [(None, dist.DEFAULT_TIMEOUT_S), ("42", 42.0), (" 0.5 ", 0.5)])
def test_process_group_gets_a_timeout(env, seconds, monkeypatch):
    calls = []
    monkeypatch.setattr(dist.torch_dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    if env is None:
        monkeypatch.delenv(dist.TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(dist.TIMEOUT_ENV, env)
    rt = dist.init_runtime(load_config(None, ["device=cpu"]))
    assert calls == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=seconds)}] and rt.owns_group
    assert dist.DEFAULT_TIMEOUT_S == 600.0  # 10 minutes, not torch's 30


@pytest.mark.parametrize("env", ["0", "-5", "nan", "inf", "soon", "1e9"])
def test_bad_timeout_variable_is_refused_by_name(env, monkeypatch):
    monkeypatch.setattr(dist.torch_dist, "init_process_group", lambda **kw: pytest.fail("initialised"))
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(dist.TIMEOUT_ENV, env)
    with pytest.raises(ConfigError, match=rf"{dist.TIMEOUT_ENV} must be a number of seconds > 0"):
        dist.init_runtime(load_config(None, ["device=cpu"]))



def test_diverged_online_probe_names_probe_lr(tmp_path, capsys, monkeypatch):
    # the method trains normally; only the probe's weights are NaN: the message names the probe's own rate
    probe_step = train_mod._probe_step

    def poisoned(probe, *args, **kwargs):
        out = probe_step(probe, *args, **kwargs)
        with torch.no_grad():
            probe.weight.fill_(math.nan)
        return out

    monkeypatch.setattr(train_mod, "_probe_step", poisoned)
    assert main(_tiny(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "state is not finite at step 3" in err[0] and "probe.weight" in err[0], err
    assert "lower probe.lr" in err[0] and not (tmp_path / "run" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("text, key", [
    ("optim:\n  lr: 0.1\noptim:\n  lr: 0.2\n", "optim"),
    ("optim: {lr: 0.1, lr: 0.2}\n", "lr"),
])
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, capsys, text, key):
    """PyYAML keeps the last of two equal keys silently: the first block of settings was dropped."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file {path} is refused: the key '{key}' is given twice"):
        read_yaml(path)
    assert main(["pretrain", "--config", str(path), "--method", "simclr", "--print-config"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 0.1, momentum: 0.9}\noptim:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(path)["optim"] == {"lr": 0.2, "momentum": 0.9}
