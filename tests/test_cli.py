"""Configuration and command line: defaults from signatures, YAML + dotted overrides, clear errors,
``pretrain`` and ``evaluate`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mvssl_core.cli import main
from mvssl_core.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from mvssl_core.results import load_results

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--data", "shapes", "--size", "16", "--backbone", "convnet", "--steps", "3", "--batch-size", "8",
    "--num-workers", "0", "--no-progress",
    "--set", "data.n=32",
    "--set", "model.kwargs={widths: [8, 16]}",
    "--set", "hyper.projector={hidden: 16, out: 8}",
    "--set", "optim.name=sgd",
    "--set", "eval.max_train=16",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# config


def test_defaults_live_in_the_dataclasses():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.optim.name == "lars" and cfg.batch_size == 256 and cfg.hyper == {}
    assert from_dict(RunConfig, to_dict(cfg)) == cfg  # round trip


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: byol_er\noptim: {lr: 0.5, name: sgd}\nhyper: {kappa: 5}\ndata: {name: shapes}\n")
    cfg = load_config(path, ["optim.lr=0.1", "hyper.projector.hidden=64", "data.view_kwargs.n_local=2",
                             "steps=10", "out=null", "model.kwargs={widths: [8, 16]}"])
    assert cfg.method == "byol_er" and cfg.optim.name == "sgd" and cfg.optim.lr == 0.1
    assert cfg.hyper == {"kappa": 5, "projector": {"hidden": 64}}
    assert cfg.data.view_kwargs == {"n_local": 2} and cfg.steps == 10 and cfg.out is None
    assert cfg.model.kwargs == {"widths": [8, 16]}
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0 and isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (["batch_size=abc"], "'batch_size' must be int"),
        (["batch_size=true"], "'batch_size' must be int"),
        (["method=mocov3"], "'method' must be one of"),
        (["data.name=mnist"], "'data.name' must be one of"),
        (["optim.lr=-1"], "'optim.lr' must be > 0"),
        (["batch_size=10", "accumulate=3"], "multiple of accumulate"),
        (["hyper.er=true"], "byol_er"),
        (["optim=3"], "section 'optim' must be a mapping"),
        (["lr"], "key.sub=value"),
        (["optim..lr=1"], "dotted names"),
        (["steps=[1"], "not valid YAML"),
        (["device=tpu"], "'device' must be one of"),
    ],
)
def test_bad_config_gives_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bad_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_override_parsing():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=hello world") == (["x"], "hello world")
    assert parse_override("x=a=b") == (["x"], "a=b")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


# ------------------------------------------------------------------------------------------------
# command line


def test_print_config(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: dino\nbatch_size: 64\noptim: {lr: 0.5}\n")
    assert main(["pretrain", "--config", str(cfg_file), "--batch-size", "32", "--set", "optim.lr=0.2",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # precedence: defaults < file < flags < --set
    assert printed["method"] == "dino" and printed["batch_size"] == 32 and printed["optim"]["lr"] == 0.2
    assert printed["optim"]["name"] == "lars"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["pretrain", "--data", "digits"], "choose a method"),
        (["pretrain", "--method", "simclr", "--set", "optim.bogus=1"], "unknown config key 'optim.bogus'"),
        (["pretrain", "--method", "nope"], "'method' must be one of"),
        (["pretrain", "--method", "simclr", "--config", "missing.yaml"], "config file not found"),
        (["pretrain", "--method", "simclr", "--out", "{tmp}/nothing", "--resume"], "no checkpoint"),
        (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    ],
)
def test_bad_arguments_exit_2_with_message(argv, match, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err


def test_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--steps", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train"])


def test_pretrain_resume_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "--method", "simclr", "--out", str(out), *TINY]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["run"] == str(out) and 0.0 <= summary["knn_top1"] <= 1.0 and "linear_top1" in summary
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "simclr"
    record = load_results(out / "results.json")
    assert record["config"]["steps"] == 3 and record["provenance"]["command"].startswith("python -m mvssl_core pretrain")

    # the same command again refuses to overwrite; --resume of a finished run changes nothing
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    # resuming with a setting that changes the result is refused, naming the key
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "optim.lr=0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err

    ckpt = out / "checkpoint.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--set", "eval.linear=false",
                 "--results", str(tmp_path / "eval.json")]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["step"] == 3 and shown["knn_top1"] == pytest.approx(summary["knn_top1"])
    assert load_results(tmp_path / "eval.json")["metrics"]["final"]["knn_top1"] == shown["knn_top1"]

    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "corrupted" in err


def test_module_entry_point(tmp_path):
    """``python -m mvssl_core`` is the command line (one subprocess: the parser's help)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mvssl_core", "pretrain", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--set" in proc.stdout
