"""book/scale.md: the ImageNet page, run as it is and with ImageNet results present.

The chapter reads its results folder from MVSSL_IMAGENET_RESULTS (default: results/imagenet of the
repository); the notebook kernel inherits the test process's environment, so the tests point it at a
temporary folder of schema-valid records (written like scripts/pretrain.sh + scripts/linear_eval.sh
write them) and never touch the repository's results/.
"""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbclient
import pytest
from _chapters import execute

from mvssl_core.config import load_config, to_dict
from mvssl_core.results import SCHEMA, provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "scale.md"
CONFIGS = ROOT / "scripts" / "configs" / "imagenet"


def _outputs(nb) -> str:
    """Every text and Markdown output of the executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            assert out.get("output_type") != "error", out
            data = out.get("data", {})
            parts += [out.get("text", ""), data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


def _run(folder: Path | None, monkeypatch) -> str:
    if folder is None:
        monkeypatch.delenv("MVSSL_IMAGENET_RESULTS", raising=False)
    else:
        monkeypatch.setenv("MVSSL_IMAGENET_RESULTS", str(folder))
    return _outputs(execute(jupytext.read(CHAPTER), CHAPTER.parent))


def _imagenet_record(method: str, overrides: list[str], *, top1: float | None, top5: float | None) -> dict:
    """A record as scripts/pretrain.sh writes it (+ metrics.linear_eval when linear_eval.sh ran)."""
    cfg = load_config(CONFIGS / f"{method}.yaml", overrides)
    metrics = {"steps": 125_200, "history": {"step": [125_150, 125_200], "loss": [1.2, 1.1]},
               "last": {"step": 125_200, "loss": 1.1}, "final": {"online_probe_train_acc": 0.55}}
    if top1 is not None:
        metrics["linear_eval"] = {
            "top1": top1, "top5": top5, "train_top1": 0.7, "train_loss": 1.3, "epochs": 100, "batch_size": 1024,
            "lr": 0.4, "n_train": 1_281_024, "n_val": 50_000, "world_size": 8, "data_root": "/data/imagenet",
            "provenance": provenance(command="python -m mvssl_core linear-eval runs/imagenet/x"),
        }
    return {"schema": SCHEMA, "method": method, "dataset": "imagefolder", "config": to_dict(cfg), "seed": cfg.seed,
            "provenance": provenance(command=f"python -m mvssl_core pretrain --config {CONFIGS / method}.yaml"),
            "metrics": metrics}


def test_page_runs_as_is(monkeypatch):
    text = _run(None, monkeypatch)
    assert "Reported by the authors" in text and "UHPva3PuKLN" in text
    assert "| SimCLR | **69.5** | 66.4 (-3.1) | 67.0 (-2.5) | 65.0 (-4.5) |" in text
    assert "| DINO | **71.6** | 71.8 (+0.2) | 71.9 (+0.3) | 70.4 (-1.2) |" in text
    shipped = sorted((ROOT / "results" / "imagenet").glob("*.json"))
    if not shipped:  # the state of the repository today: the page says so
        assert "No ImageNet results are present" in text
    else:
        assert "Measured with this library" in text and all(p.stem in text for p in shipped)


def test_page_shows_imagenet_runs_when_present(tmp_path, monkeypatch):
    folder = tmp_path / "imagenet"
    write_results(folder / "simclr_er.json", _imagenet_record("simclr_er", [], top1=0.70134, top5=0.8934))
    write_results(folder / "byol_b512.json",
                  _imagenet_record("byol", ["batch_size=512"], top1=None, top5=None))  # pre-trained, not probed yet
    text = _run(folder, monkeypatch)
    assert "No ImageNet results are present" not in text
    assert "Measured with this library**: 2 run(s)" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == {"`simclr_er`", "`byol_b512`"}
    cells = [c.strip() for c in rows["`simclr_er`"].split("|")[1:-1]]
    assert cells[1:7] == ["simclr_er", "4096", "400", "125200", "70.13", "89.34"]
    assert cells[7] == "100 epochs, 8 processes"
    commit = json.loads((folder / "simclr_er.json").read_text())["provenance"]["git_commit"]
    assert commit is None or commit[:7] in cells[8]
    cells = [c.strip() for c in rows["`byol_b512`"].split("|")[1:-1]]
    assert cells[1:7] == ["byol", "512", "400", "125200", "not evaluated yet", "not evaluated yet"]


def test_page_refuses_a_malformed_imagenet_file_naming_the_field(tmp_path, monkeypatch):
    folder = tmp_path / "imagenet"
    record = _imagenet_record("dino_er", [], top1=0.7, top5=0.9)
    record["metrics"]["linear_eval"]["top1"] = 70.0  # a percentage where a fraction belongs
    write_results(folder / "dino_er.json", record)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match=r"metrics\.linear_eval\.top1"):
        _run(folder, monkeypatch)
    record["metrics"]["linear_eval"]["top1"] = 0.7
    del record["provenance"]["hardware"]  # the schema of mvssl_core.results
    (folder / "dino_er.json").write_text(json.dumps(record))
    with pytest.raises(nbclient.exceptions.CellExecutionError, match=r"provenance\.hardware"):
        _run(folder, monkeypatch)
