"""The schemas of the results files the book reads: every refused case names the file and the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from mvssl_core.experiments import load_experiment
from mvssl_core.results import ResultsError, SCHEMA, load_results, provenance, record_kind, write_results
from mvssl_core.schemas import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
PROV = provenance(command="python scripts/experiments/ssl_runs.py test")


def _run(name: str, method: str, seed: int, acc: float) -> dict:
    return {"name": name, "family": method.removesuffix("_er"), "method": method, "variant": "v", "seed": seed,
            "batch_size": 16, "epochs": 1, "labels": {}, "steps": 4,
            "history": {"step": [2, 4], "entropy": [1.0, None]}, "final": {"knn_top1": acc, "linear_top1": acc},
            "seconds": 1.0, "config": {"method": method, "seed": seed, "resolved": {}}}


EXPERIMENT = {
    "schema": SCHEMA, "method": "ssl_runs experiment 'test'", "dataset": "digits", "config": {}, "seed": 0,
    "provenance": PROV,
    "metrics": {"runs": [_run("byol/v/s0", "byol", 0, 0.9), _run("byol/v/s1", "byol", 1, 0.8),
                         _run("dino/v/s0", "dino", 0, 0.7)],
                "random_init": [{"seed": 0, "knn_top1": 0.3, "linear_top1": 0.4},
                                {"seed": 1, "knn_top1": 0.3, "linear_top1": 0.4}]},
}


def _refused(path: Path, loader=load_experiment) -> str:
    with pytest.raises(ResultsError) as err:
        loader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message  # names the file first
    assert "\n" not in message
    return message


def _write(tmp_path: Path, record: dict, name: str = "exp.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


def _mutated(mutate) -> dict:
    record = copy.deepcopy(EXPERIMENT)
    mutate(record)
    return record


def test_the_schemas_are_valid_draft_2020_12():
    for kind, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", kind


def test_a_good_experiment_loads(tmp_path):
    assert load_experiment(_write(tmp_path, EXPERIMENT)) == EXPERIMENT


def test_every_shipped_results_file_loads_with_its_kind():
    """Every file of results/ follows the schema of its kind (the book reads them all)."""
    files = sorted((ROOT / "results").rglob("*.json"))
    kinds = {}
    for path in files:  # the kind is told by the record itself (load_experiment is kind "experiment")
        kinds[path.relative_to(ROOT / "results").as_posix()] = record_kind(load_results(path))
    assert kinds["critics.json"] == "critics" and kinds["mi_not_enough.json"] == "mi_not_enough"
    assert {k for f, k in kinds.items() if f.startswith("ssl/")} == {"experiment"}
    assert len(kinds) == len(files) >= 10


# ------------------------------------------------------------------------------------------------
# ssl_runs experiments (results/ssl/*.json)

def test_a_duplicated_run_is_refused(tmp_path):
    """The case of the issue: a run listed twice moved a chapter's mean (from 89.69 % to 69.77 %)."""
    shipped = json.loads((ROOT / "results" / "ssl" / "dynamics.json").read_text())
    shipped["metrics"]["runs"].append(copy.deepcopy(shipped["metrics"]["runs"][0]))
    path = _write(tmp_path, shipped, "dynamics.json")
    message = _refused(path)
    assert message == (f"{path}: metrics.runs[40] (byol/published/s0): field 'name' repeats metrics.runs[0]'s: "
                       "each run must be listed once (a repeated run is counted twice in every mean)")


def test_a_run_repeated_under_another_name_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"].append(
        {**copy.deepcopy(r["metrics"]["runs"][0]), "name": "byol/copy/s0"})))
    message = _refused(path)
    assert "metrics.runs[3] (byol/copy/s0): is the run of metrics.runs[0] (byol/v/s0) again" in message


@pytest.mark.parametrize("value, got", [(7.5, "got 7.5 (a number)"), (-0.3, "got -0.3 (a number)"),
                                        ("0.9", "got '0.9' (a string)"), (True, "got True (a boolean)")])
def test_an_accuracy_that_is_not_a_fraction_is_refused(tmp_path, value, got):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][1]["final"].update(knn_top1=value)))
    assert _refused(path) == (f"{path}: metrics.runs[1] (byol/v/s1): field 'final.knn_top1' must be a fraction "
                              f"in [0, 1], {got}")


def test_an_untrained_accuracy_out_of_range_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["random_init"][1].update(linear_top1=92.4)))
    assert "field 'metrics.random_init[1].linear_top1' must be a fraction in [0, 1], got 92.4" in _refused(path)


def test_a_name_that_says_another_seed_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][0].update(seed=5)))
    assert _refused(path) == f"{path}: metrics.runs[0] (byol/v/s0): field 'name' says seed 0 but field 'seed' is 5"


def test_a_config_that_says_another_seed_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][2]["config"].update(seed=3)))
    assert "metrics.runs[2] (dino/v/s0): field 'config.seed' is 3 but field 'seed' is 0" in _refused(path)


@pytest.mark.parametrize("mutate, field, got", [
    (lambda run: run.update(steps=-3), "steps", "must be a whole number >= 1, got -3"),
    (lambda run: run["history"].update(step=[-2, 4]), r"history.step[0]", "must be a whole number >= 0, got -2"),
    (lambda run: run.update(epochs=0), "epochs", "must be a whole number >= 1, got 0"),
    (lambda run: run.update(batch_size=16.5), "batch_size", "must be a whole number >= 1, got 16.5"),
])
def test_negative_counts_are_refused(tmp_path, mutate, field, got):
    path = _write(tmp_path, _mutated(lambda r: mutate(r["metrics"]["runs"][0])))
    assert _refused(path).startswith(f"{path}: metrics.runs[0] (byol/v/s0): field '{field}' {got} (")


@pytest.mark.parametrize("steps, where", [([4, 2], "[1] = 2 follows [0] = 4"), ([2, 2], "[1] = 2 follows [0] = 2")])
def test_a_history_whose_steps_do_not_increase_is_refused(tmp_path, steps, where):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][2]["history"].update(step=steps)))
    assert _refused(path) == (f"{path}: metrics.runs[2] (dino/v/s0): field 'history.step' must increase strictly: "
                              f"{where}")


def test_a_history_beyond_the_last_step_or_of_another_length_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][0]["history"].update(step=[2, 40])))
    assert "field 'history.step' logs step 40, after the run's last step (field 'steps' = 4)" in _refused(path)
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][0]["history"].update(entropy=[1.0])))
    assert "(byol/v/s0): field 'history.entropy' has 1 values, 'history.step' has 2" in _refused(path)


def test_an_unknown_method_is_refused(tmp_path):
    def mutate(r):
        r["metrics"]["runs"][1].update(method="byol2", family="byol2")
        r["metrics"]["runs"][1]["config"]["method"] = "byol2"

    path = _write(tmp_path, _mutated(mutate))
    message = _refused(path)
    assert message.startswith(f"{path}: metrics.runs[1] (byol/v/s1): field 'method' must be a method of "
                              "mvssl_core.methods.METHODS (simclr, simclr_er, byol")
    assert message.endswith("got 'byol2'")
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["runs"][1].update(family="dino")))
    assert "field 'family' must be 'byol' (the family of method 'byol'), got 'dino'" in _refused(path)


@pytest.mark.parametrize("field", ["final", "seed", "history", "config", "final.linear_top1", "history.step"])
def test_a_missing_run_field_is_refused(tmp_path, field):
    def mutate(r):
        *parents, last = field.split(".")
        node = r["metrics"]["runs"][2]
        for key in parents:
            node = node[key]
        del node[last]

    path = _write(tmp_path, _mutated(mutate))
    assert _refused(path) == f"{path}: metrics.runs[2] (dino/v/s0): required field '{field}' is missing"


def test_a_repeated_untrained_seed_is_refused(tmp_path):
    path = _write(tmp_path, _mutated(lambda r: r["metrics"]["random_init"][1].update(seed=0)))
    assert "field 'metrics.random_init[1].seed' repeats seed 0 of metrics.random_init[0]" in _refused(path)


def test_the_first_wrong_run_in_the_file_is_named(tmp_path):
    def mutate(r):
        r["metrics"]["runs"][2]["final"]["knn_top1"] = 3.0
        del r["metrics"]["runs"][1]["seed"]

    message = _refused(_write(tmp_path, _mutated(mutate)))
    assert "metrics.runs[1] (byol/v/s1): required field 'seed' is missing" in message


# ------------------------------------------------------------------------------------------------
# Strict JSON: what Python's json would accept silently

@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused_naming_the_field(tmp_path, literal):
    text = json.dumps(EXPERIMENT).replace('"knn_top1": 0.8', f'"knn_top1": {literal}', 1)
    path = tmp_path / "exp.json"
    path.write_text(text)
    message = _refused(path)
    assert message.startswith(f"{path}: metrics.runs[1] (byol/v/s1): field 'final.knn_top1' holds the literal "
                              f"{literal}, which ")
    assert message.endswith("store a non-finite value as null")
    assert ("overflows to infinity" in message) == ("e999" in literal)
    assert _refused(path, load_results) == message  # whatever the loader


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    text = json.dumps(EXPERIMENT).replace('"seed": 1, "batch_size"', '"seed": 1, "seed": 0, "batch_size"', 1)
    path = tmp_path / "exp.json"
    path.write_text(text)
    assert json.loads(text)["metrics"]["runs"][1]["seed"] == 0  # what json.load would have read
    assert _refused(path) == (f"{path}: metrics.runs[1] (byol/v/s1): field 'seed' is given more than once in one "
                              "object; a JSON reader keeps one of the values silently, so each key must appear once")
    text = json.dumps({**EXPERIMENT, "dataset": "digits"}).replace('"dataset"', '"dataset": "x", "dataset"', 1)
    path.write_text(text)
    assert "field 'dataset' is given more than once" in _refused(path, load_results)


# ------------------------------------------------------------------------------------------------
# The other kinds: critics, mi_not_enough, a trainer's run

def _shipped(name: str) -> dict:
    return json.loads((ROOT / "results" / name).read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["metrics"]["runs"].append(copy.deepcopy(r["metrics"]["runs"][3])),
     "metrics.runs[13] (nwj/concat/k=64/gaussian): field 'name' repeats metrics.runs[3]'s"),
    (lambda r: r["metrics"]["runs"][2].update(objective="dv"),
     "metrics.runs[2] (nwj/separable/k=64/gaussian): field 'objective' must be one of ['infonce', 'nwj', 'er'], "
     "got 'dv'"),
    (lambda r: r["metrics"]["runs"][0].update(name="infonce/separable/k=32/gaussian"),
     "metrics.runs[0] (infonce/separable/k=32/gaussian): field 'name' must be 'infonce/separable/k=64/gaussian'"),
    (lambda r: r["metrics"]["runs"][0]["step"].reverse(), "field 'step' must increase strictly"),
    (lambda r: r["metrics"]["runs"][0]["estimate"].pop(), "field 'estimate' has 499 values, 'step' has 500"),
    (lambda r: r["metrics"]["runs"][4]["stages"][0].pop("mean"), "required field 'stages[0].mean' is missing"),
])
def test_critics_file_is_checked(tmp_path, mutate, message):
    record = _shipped("critics.json")
    mutate(record)
    path = _write(tmp_path, record, "critics.json")
    assert message in _refused(path, load_results)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["metrics"]["runs"].append(copy.deepcopy(r["metrics"]["runs"][0])),
     "metrics.runs[12] (infonce/bilinear/s0): field 'name' repeats metrics.runs[0]'s"),
    (lambda r: r["metrics"]["runs"][1].update(seed=7), "(infonce/bilinear/s1): field 'name' says seed 1 but field "
                                                      "'seed' is 7"),
    (lambda r: r["metrics"]["runs"][3]["curve"]["probe_test_top1"].__setitem__(2, 88.1),
     "metrics.runs[3] (infonce/mlp/s0): field 'curve.probe_test_top1[2]' must be a fraction in [0, 1], or null "
     "where it was not finite, got 88.1"),
    (lambda r: r["metrics"]["runs"][0].update(objective="nce", name="nce/s0"),
     "field 'objective' must be one of config.objectives"),
    (lambda r: r["metrics"]["raw_pixels"].update(probe_test_top1=-0.3),
     "field 'metrics.raw_pixels.probe_test_top1' must be a fraction in [0, 1], got -0.3"),
])
def test_mi_not_enough_file_is_checked(tmp_path, mutate, message):
    record = _shipped("mi_not_enough.json")
    mutate(record)
    path = _write(tmp_path, record, "mi_not_enough.json")
    assert message in _refused(path, load_results)


def _trainer_record() -> dict:
    return {"schema": SCHEMA, "method": "simclr", "dataset": "digits",
            "config": {"method": "simclr", "seed": 3, "batch_size": 16}, "seed": 3, "provenance": PROV,
            "metrics": {"steps": 4, "history": {"step": [2, 4], "loss": [2.0, 1.0]}, "last": {"step": 4},
                        "final": {"knn_top1": 0.5, "online_probe_train_acc": 0.25},
                        "linear_eval": {"top1": 0.7, "top5": 0.9}}}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["metrics"]["linear_eval"].update(top1=70.0),
     "field 'metrics.linear_eval.top1' must be a fraction in [0, 1], got 70.0"),
    (lambda r: r["metrics"]["final"].update(knn_top1=7.5), "field 'metrics.final.knn_top1' must be a fraction"),
    (lambda r: r["metrics"].update(steps=-1), "field 'metrics.steps' must be a whole number >= 1, got -1"),
    (lambda r: r["metrics"]["history"].update(step=[4, 2]), "field 'metrics.history.step' must increase strictly"),
    (lambda r: r.update(seed=5), "field 'seed' is 5 but field 'config.seed' is 3"),
    (lambda r: r["config"].update(method="simclr3"), "field 'config.method' must be a method of "
                                                     "mvssl_core.methods.METHODS"),
])
def test_trainer_run_record_is_checked(tmp_path, mutate, message):
    assert load_results(_write(tmp_path, _trainer_record(), "good.json"))["seed"] == 3
    record = _trainer_record()
    mutate(record)
    path = _write(tmp_path, record, "results.json")
    assert message in _refused(path, load_results)


def test_runs_of_no_known_layout_are_refused(tmp_path):
    record = copy.deepcopy(EXPERIMENT)
    del record["metrics"]["random_init"]
    path = _write(tmp_path, record)
    assert "field 'metrics.runs' is present, but the record is none of the known multi-run files" in \
        _refused(path, load_results)
    assert _refused(path) == f"{path}: required field 'metrics.random_init' is missing"  # as an experiment


def test_write_results_checks_the_common_fields_only(tmp_path):
    """A writer's record is kept even when the reader would refuse it (to be looked at), and refused on reading."""
    record = _trainer_record()
    record["metrics"]["final"]["knn_top1"] = 7.5
    path = write_results(tmp_path / "r.json", record)
    assert re.search(r"metrics\.final\.knn_top1' must be a fraction", _refused(path, load_results))
