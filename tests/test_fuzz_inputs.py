"""scripts/fuzz_inputs.py (issue 15, "Nothing silently wrong"): its classifier, and its ``--quick`` subset.

The classifier is tested on made-up outcomes (what counts as a clear error, what is silent, what is
unclear); the quick subset runs as a command, as a reader reruns it, and its tally is checked per group:
run folders, results files and the command line refuse every bad input clearly; the public functions are
held to the count of cases still open when this test was written (no new silent or unclear case)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FUZZ = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fuzz_inputs", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_inputs"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fz = _load_script()


# ----------------------------------------------------------------------------- the classifier (functions)


def test_a_value_error_naming_the_argument_is_clear():
    message = "temperature must be a finite number > 0, got 0"
    assert fz.classify(exc=ValueError(message), expect=("temperature",)) == ("clear", f"ValueError: {message}")


def test_the_clear_family_includes_type_and_path_errors():
    assert fz.classify(exc=TypeError("kappa must be a real number, got str"), expect=("kappa",))[0] == "clear"
    assert fz.classify(exc=FileNotFoundError("checkpoint not found: /x/run/checkpoint.pt"),
                       expect=("checkpoint.pt",))[0] == "clear"
    assert fz.classify(exc=FileExistsError("/x/run already holds a checkpoint"), expect=("run",))[0] == "clear"


def test_a_value_error_not_naming_the_argument_is_unclear():
    outcome, detail = fz.classify(exc=ValueError("size must be an int >= 1, got -1"), expect=("blur_size",))
    assert outcome == "unclear"
    assert detail == "does not name blur_size: ValueError: size must be an int >= 1, got -1"


def test_a_name_counts_only_as_a_whole_word():
    # "steps" is not "step", "in_dim" is not "dim"; a dotted name or a path is a substring match
    assert fz.classify(exc=ValueError("field 'steps' must be > 0"), expect=("step",))[0] == "unclear"
    assert fz.classify(exc=TypeError("in_dim must be an int, got bool"), expect=("dim",))[0] == "unclear"
    assert fz.classify(exc=ValueError("config key 'optim.lr' must be finite"), expect=("optim.lr",))[0] == "clear"
    assert fz.classify(exc=ValueError("Field 'Seed' repeats"), expect=("seed",))[0] == "clear"  # case-insensitive


@pytest.mark.parametrize("exc", [IndexError("tuple index out of range"), RuntimeError("mat1 and mat2 shapes"),
                                 AttributeError("'str' object has no attribute 'T'"), KeyError("temperature")])
def test_other_exception_types_are_unclear_even_when_they_name_the_argument(exc):
    outcome, detail = fz.classify(exc=exc, expect=("temperature", "T", "mat1"))
    assert outcome == "unclear" and detail.startswith(type(exc).__name__ + ":")


def test_no_exception_is_silent():
    assert fz.classify(value=1.25, expect=("temperature",)) == ("silent", "accepted")
    assert fz.classify(value=None, expect=("temperature",)) == ("silent", "accepted")


def test_a_timeout_is_unclear():
    assert fz.classify(exc=fz.CaseTimeout(), expect=("x",)) == ("unclear", "timed out (a hang)")


# ----------------------------------------------------------------------------- the classifier (by design)


def test_a_nan_entry_propagated_by_a_module_forward_is_by_design_and_not_clear():
    nan_out = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    inf_out = torch.tensor([1.0, float("inf")])
    outcome, detail = fz.classify(value=nan_out, expect=("z",), propagates=True)
    assert outcome == "by_design" and "NaN/inf" in detail
    assert fz.classify(value=[torch.ones(2), inf_out], expect=("z",), propagates=True)[0] == "by_design"
    assert fz.classify(value=(torch.tensor(float("nan")), {"loss": 1.0}), expect=("z",), propagates=True)[0] \
        == "by_design"  # a method's StepOutput: a NaN loss
    assert fz.classify(value=(torch.tensor(0.5), {"entropy": float("inf")}), expect=("z",),
                       propagates=True)[0] == "by_design"  # ... or a non-finite metric


def test_a_nan_entry_swallowed_by_a_module_forward_is_silent():
    outcome, detail = fz.classify(value=torch.ones(3, 2), expect=("z",), propagates=True)
    assert outcome == "silent" and "swallowed" in detail
    assert fz.classify(value=(torch.tensor(0.5), {"loss": 0.5}), expect=("z",), propagates=True)[0] == "silent"
    assert fz.classify(value=None, expect=("z",), propagates=True)[0] == "silent"


def test_by_design_applies_only_to_marked_cases_and_never_to_a_refusal():
    nan_out = torch.tensor([float("nan")])
    assert fz.classify(value=nan_out, expect=("z",)) == ("silent", "accepted")  # not marked: silent
    message = "z must contain only finite values (found NaN or inf)"
    assert fz.classify(exc=ValueError(message), expect=("z",), propagates=True) == ("clear", f"ValueError: {message}")
    assert fz.classify(exc=RuntimeError("boom"), expect=("z",), propagates=True)[0] == "unclear"


def test_only_nan_and_inf_entries_into_module_forwards_are_marked():
    cases, broken = fz.function_cases()
    assert broken == []
    marked = sorted(c.name for c in cases if c.propagates)
    assert marked and all(re.fullmatch(r"[\w.()]+\.forward: \w+=(NaN|inf) entry", n) for n in marked), marked
    for name in ("heads.Prototypes.forward: z=NaN entry", "heads.DINOHead.forward: x=inf entry",
                 "critics.Bilinear.forward: b=NaN entry", "methods.simclr.forward: views=NaN entry"):
        assert name in marked
    # an empty batch into a forward is not by design: it must be refused
    empty = [c for c in cases if c.name == "heads.Prototypes.forward: z=empty"]
    assert len(empty) == 1 and not empty[0].propagates
    assert not any(c.propagates for c in cases if not re.search(r"\.forward: ", c.name))


def test_run_case_classifies_a_propagating_forward_as_by_design():
    def forward():
        return torch.nn.Linear(3, 2)(torch.tensor([[float("nan"), 0.0, 1.0]]))

    o = fz.run_case(fz.Case("functions", "m.forward: x=NaN entry", forward, ("x",), propagates=True))
    assert o.outcome == "by_design"
    assert o.detail == "propagated: the output holds NaN/inf (a forward does not read values)"


# ----------------------------------------------------------------------------- the classifier (command line)

_ERR = "python -m mvssl_core pretrain: error: config key 'optim.lr' must be a finite number, got nan\n"


def test_cli_one_error_line_naming_the_key_with_a_nonzero_exit_is_clear():
    outcome, detail = fz.classify(fz.CliResult(2, _ERR), expect=("optim.lr",))
    assert outcome == "clear" and detail == "exit 2: " + _ERR.strip()
    usage = "usage: python -m mvssl_core pretrain [-h] ...\n" + _ERR  # argparse prints its usage first
    assert fz.classify(fz.CliResult(2, usage), expect=("optim.lr",))[0] == "clear"


def test_cli_exit_0_is_silent():
    assert fz.classify(fz.CliResult(0, ""), expect=("optim.lr",)) == ("silent", "exit 0")
    assert fz.classify(fz.CliResult(0, _ERR), expect=("optim.lr",)) == ("silent", "exit 0")


def test_cli_a_traceback_is_unclear_even_with_an_error_line():
    err = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
           "ValueError: lr must be a finite number > 0, got -0.1\n" + _ERR)
    outcome, detail = fz.classify(fz.CliResult(1, err), expect=("lr", "optim.lr"))
    assert outcome == "unclear" and detail.startswith("exit 1, traceback: ")


def test_cli_no_error_line_two_error_lines_or_an_error_not_naming_the_key_are_unclear():
    assert fz.classify(fz.CliResult(1, "Killed\n"), expect=("optim.lr",)) == ("unclear",
                                                                           "exit 1, 0 error lines: Killed")
    assert fz.classify(fz.CliResult(2, _ERR + _ERR), expect=("optim.lr",))[0] == "unclear"
    outcome, detail = fz.classify(fz.CliResult(2, "prog: error: something went wrong\n"), expect=("optim.lr",))
    assert outcome == "unclear" and "does not name optim.lr" in detail


def test_a_run_that_goes_on_is_clear_only_when_a_data_warning_names_the_input():
    folder = "/d/imgs/train/dog"
    named = fz.Reported(0, "", [f"image folder /d/imgs/train: 1 folder could not be listed: {folder} (EACCES)"])
    assert fz.classify(named, expect=(folder,))[0] == "clear"
    assert fz.classify(fz.Reported(0, "", []), expect=(folder,)) == ("silent", "exit 0, nothing reported")
    assert fz.classify(fz.Reported(0, "", ["something odd"]), expect=(folder,))[0] == "unclear"
    # a refusal instead of a report is judged as any command line run
    assert fz.classify(fz.Reported(2, f"prog: error: {folder} cannot be listed\n", []), expect=(folder,))[0] == "clear"


def test_run_case_turns_system_exit_into_a_command_line_outcome():
    def exits():
        raise SystemExit(0)

    o = fz.run_case(fz.Case("cli", "exits", exits, ("x",)))
    assert (o.group, o.name, o.outcome, o.detail) == ("cli", "exits", "silent", "exit 0")


def test_the_tally_counts_every_outcome():
    outcomes = [fz.Outcome("cli", "a", "clear", ""), fz.Outcome("cli", "b", "silent", ""),
                fz.Outcome("cli", "c", "unclear", ""), fz.Outcome("results_files", "d", "clear", ""),
                fz.Outcome("functions", "e.forward: x=NaN entry", "by_design", ""),
                fz.Outcome("functions", "f", "clear", "")]
    assert fz.tally(outcomes) == {
        "functions": {"tried": 2, "clear": 1, "silent": 0, "unclear": 0, "by_design": 1},
        "cli": {"tried": 3, "clear": 1, "silent": 1, "unclear": 1, "by_design": 0},
        "results_files": {"tried": 1, "clear": 1, "silent": 0, "unclear": 0, "by_design": 0},
    }


def test_the_table_has_a_by_design_column_never_added_to_clear():
    t = fz.tally([fz.Outcome("functions", "a", "clear", ""), fz.Outcome("functions", "b.forward: x=NaN entry",
                                                                     "by_design", "")])
    lines = fz.format_table(t).splitlines()
    assert lines[0].split() == ["group", "tried", "clear", "silent", "unclear", "by_design"]
    assert lines[2].split() == ["functions", "2", "1", "0", "0", "1"]
    assert lines[-1].split() == ["total", "2", "1", "0", "0", "1"]


# ----------------------------------------------------------------------------- the quick subset, as a command

@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fuzz") / "tally.json"
    done = subprocess.run([sys.executable, str(FUZZ), "--quick", "--json", str(out)], cwd=FUZZ.parents[1],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    report["stdout"] = done.stdout
    return report


def _open(report: dict, group: str) -> list[str]:
    return [f"{c['outcome']}: {c['name']} [{c['detail']}]" for c in report["cases"]
            if c["group"] == group and c["outcome"] != "clear"]


def test_quick_every_valid_call_of_the_harness_succeeds(quick):
    assert quick["mode"] == "quick" and quick["notes"] == []


def test_quick_the_tally_is_printed_per_group(quick):
    lines = quick["stdout"].splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("group "))
    assert lines[head].split() == ["group", "tried", "clear", "silent", "unclear", "by_design"]
    for group, row in quick["tally"].items():
        assert f"{group}: {row['tried']} tried, {row['clear']} clear errors, {row['silent']} silent, " \
               f"{row['unclear']} unclear, {row['by_design']} by design" in lines
        assert row["tried"] == row["clear"] + row["silent"] + row["unclear"] + row["by_design"]


def test_quick_by_design_only_for_nan_or_inf_entries_into_a_forward(quick):
    by_design = [c["name"] for c in quick["cases"] if c["outcome"] == "by_design"]
    assert all(re.fullmatch(r"[\w.()]+\.forward: \w+=(NaN|inf) entry", n) for n in by_design), by_design
    assert all(quick["tally"][g]["by_design"] == 0 for g in ("cli", "run_folders", "results_files"))


@pytest.mark.parametrize("group, at_least", [("run_folders", 10), ("results_files", 20)])
def test_quick_run_folders_and_results_files_refuse_every_bad_input_clearly(quick, group, at_least):
    row = quick["tally"][group]
    assert row["tried"] >= at_least
    assert _open(quick, group) == []
    assert row["clear"] == row["tried"]


def test_quick_cli_refuses_every_bad_input_clearly(quick):
    """Items 2, 3, 4, 7, 8 through the command line (NaN config keys, linear-eval flags, ImageFolders...)."""
    row = quick["tally"]["cli"]
    assert row["tried"] >= 25
    assert _open(quick, "cli") == []
    assert row["clear"] == row["tried"]


def test_quick_functions_refuse_every_bad_input_clearly(quick):
    """Every public function names the argument it refuses; NaN / inf entries into a module's forward propagate
    (by design: a forward does not read values, which would cost a host sync every step)."""
    row = quick["tally"]["functions"]
    assert row["tried"] >= 250
    assert [c for c in _open(quick, "functions") if not c.startswith("by_design")] == []
    assert row["silent"] == row["unclear"] == 0
