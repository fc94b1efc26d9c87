"""The per-GPU batch plan (mvssl_core/memory_plan.py): activations from the crops, the smallest accumulation
that fits, and the README's table made by the module (not typed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mvssl_core.config import ConfigError, RunConfig, from_dict, read_yaml
from mvssl_core.memory_plan import RECIPES, activation_mib, crop_sides, main, plan_accumulate, table

REPO = Path(__file__).resolve().parent.parent


def _recipe(name: str) -> RunConfig:
    return from_dict(RunConfig, read_yaml(RECIPES / f"{name}.yaml"))


@pytest.mark.parametrize("name, sides", [
    ("simclr", [224, 224]), ("byol_er", [224, 224]), ("dino", [224, 224] + [96] * 6),
    ("swav", [224, 224] + [96] * 6), ("deepcluster", [160, 160] + [96] * 4),
])
def test_crops_and_activations_per_sample(name, sides):
    cfg = _recipe(name)
    assert crop_sides(cfg) == sides
    assert activation_mib(cfg) == pytest.approx(42.0 * sum((s / 224) ** 2 for s in sides), rel=1e-12)


def test_activations_of_a_224_crop_match_the_review_measurements():
    # issue 13's review: 42 MiB per 224-px crop, 7.8 MiB per 96-px crop (the quadratic rule: within 2 %)
    assert 42.0 * (96 / 224) ** 2 == pytest.approx(7.8, rel=0.02)
    assert activation_mib(_recipe("simclr")) * 512 / 1024 == pytest.approx(42.0)


@pytest.mark.parametrize("batch, world, per_sample, gpu, at_least, expected", [
    (4096, 8, 84.0, 81559, 1, 1),      # 43,008 MiB <= 61,169
    (4096, 8, 130.8, 81559, 1, 2),     # 66,970 > 61,169; 33,485 fits
    (4096, 8, 130.8, 40960, 1, 4),
    (4096, 8, 84.0, 81559, 4, 4),      # never below the recipe's
    (96, 8, 100.0, 300, 1, 6),         # 12 per GPU, 225 MiB usable: 12, 6, 4, 3 samples too many; 2 fit
    (4096, 1, 84.0, 81559, 1, 8),      # one GPU: 4096 -> 512 a micro-batch
])
def test_plan_is_the_smallest_dividing_accumulation_that_fits(batch, world, per_sample, gpu, at_least, expected):
    a = plan_accumulate(batch, world, per_sample, gpu, at_least=at_least)
    assert a == expected
    per_gpu = batch // world
    assert per_gpu % a == 0 and per_gpu // a * per_sample <= 0.75 * gpu
    smaller = [b for b in range(at_least, a) if per_gpu % b == 0]
    assert all(per_gpu // b * per_sample > 0.75 * gpu for b in smaller)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(world_size=True), "world_size must be an int >= 1"),
    (dict(per_sample_mib=float("nan")), "per_sample_mib must be a finite number > 0"),
    (dict(gpu_mib=-1), "gpu_mib must be a finite number > 0"),
    (dict(usable=1.5), r"usable must be in \(0, 1\]"),
    (dict(batch_size=100, world_size=8), r"batch_size \(100\) must be a multiple of world_size \(8\)"),
    (dict(per_sample_mib=1e6), "no accumulation fits: one sample needs 1000000 MiB"),
])
def test_plan_refuses_bad_arguments_by_name(kwargs, match):
    args = dict(batch_size=4096, world_size=8, per_sample_mib=84.0, gpu_mib=81559.0) | kwargs
    with pytest.raises(ValueError, match=match):
        plan_accumulate(**args)


def test_unknown_backbone_is_refused_by_key():
    cfg = from_dict(RunConfig, {**read_yaml(RECIPES / "simclr.yaml"), "model": {"backbone": "resnet18"}})
    with pytest.raises(ConfigError, match="model.backbone: no activation measurement for 'resnet18'"):
        activation_mib(cfg)


def test_command_line(capsys):
    assert main([str(RECIPES / "dino.yaml"), "--world", "8", "--gpu-mib", "81559"]) == 0
    accumulate, micro, mib = map(int, capsys.readouterr().out.split())
    assert (accumulate, micro) == (2, 256) and mib == round(256 * activation_mib(_recipe("dino")))
    assert main([str(RECIPES / "dino.yaml"), "batch_size=100", "--world", "8", "--gpu-mib", "81559"]) == 2
    assert "error: batch_size (100) must be a multiple of world_size (8)" in capsys.readouterr().err


def test_readme_table_is_the_modules():
    readme = (REPO / "README.md").read_text()
    made = table()
    assert made in readme, "README's per-GPU batch table differs from `python -m mvssl_core.memory_plan --table`"
    assert len(re.findall(r"^\| (\w+) \|", made, flags=re.M)) == 1 + len(list(RECIPES.glob("*.yaml")))


def test_overrides_after_the_options(capsys):
    assert main([str(RECIPES / "dino.yaml"), "--world", "8", "--gpu-mib", "81559", "model.backbone=resnet18"]) == 2
    assert "error: model.backbone: no activation measurement for 'resnet18'" in capsys.readouterr().err
