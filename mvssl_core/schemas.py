"""JSON Schemas (draft 2020-12) of the results files the book reads, as data.

One schema per kind of file, each a complete ``mvssl-results/1`` record (:mod:`mvssl_core.results`) whose
``metrics`` (and, where the book reads it, ``config``) are spelled out:

- ``record``: any record (the common fields only: what ran, on what, with which config, seed and provenance).
- ``run``: one training run of :func:`mvssl_core.train.train` (``run_record``: ``results.json`` of a run folder,
  ``results/imagenet/<run>.json``), or of ``mvssl_core evaluate --results``.
- ``experiment``: many runs of ``scripts/experiments/ssl_runs.py`` (``results/ssl/<experiment>.json``).
- ``critics``: the trained MI critics of ``scripts/experiments/train_critics.py`` (``results/critics.json``).
- ``mi_not_enough``: the bijective encoders of ``scripts/experiments/mi_not_enough.py``
  (``results/mi_not_enough.json``).

and ``published``: the accuracies reported by others, ``book/data/published_imagenet.yaml`` (YAML, not a record).

What a schema cannot say (a run listed twice, a name that disagrees with its seed, steps that go back, a
method missing from :data:`mvssl_core.methods.METHODS`) is checked by :func:`mvssl_core.results.validate_results`.
A subschema's ``description`` is what an error message says the value must be.
"""

from __future__ import annotations

import copy

__all__ = ["DRAFT", "DEFS", "RECORD", "RUN", "EXPERIMENT", "CRITICS", "MI_NOT_ENOUGH", "PUBLISHED", "SCHEMAS"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

DEFS = {
    "text": {"type": "string", "pattern": r"\S", "description": "a non-empty string"},
    "seed": {"type": "integer", "minimum": 0, "description": "a whole number >= 0"},
    "count": {"type": "integer", "minimum": 1, "description": "a whole number >= 1"},
    "size": {"type": "integer", "minimum": 0, "description": "a whole number >= 0"},
    "seconds": {"type": "number", "minimum": 0, "description": "a duration in seconds >= 0"},
    "fraction": {"type": "number", "minimum": 0, "maximum": 1, "description": "a fraction in [0, 1]"},
    "fraction_or_null": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                         "description": "a fraction in [0, 1], or null where it was not finite"},
    "value": {"type": ["number", "null"], "description": "a number, or null where it was not finite"},
    # a logged curve: one value per logged step; its steps increase strictly (checked in Python)
    "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/size"},
              "description": "a non-empty list of whole numbers >= 0"},
    "curve": {"type": "array", "items": {"$ref": "#/$defs/value"},
              "description": "a list of numbers (null where not finite)"},
    "history": {
        "type": "object", "required": ["step"],
        "properties": {"step": {"$ref": "#/$defs/steps"}},
        "additionalProperties": {"$ref": "#/$defs/curve"},
        "description": "an object of logged curves with a 'step' list",
    },
    # accuracies of mvssl_core.evaluate.evaluate_run (and the online probe): fractions, never percentages
    "final": {
        "type": "object",
        "properties": {"n_train": {"$ref": "#/$defs/size"}, "n_test": {"$ref": "#/$defs/size"}},
        "patternProperties": {"(_top1|_top5|_acc)$": {"$ref": "#/$defs/fraction"}},
        "description": "an object of final accuracies",
    },
    "hardware": {
        "type": "object",
        "required": ["platform", "cpu", "cpu_count", "python", "torch", "threads"],
        "properties": {
            "platform": {"type": "string", "description": "a string"},
            "cpu": {"type": "string", "description": "a string"},
            "cpu_count": {"type": ["integer", "null"], "minimum": 1, "description": "a whole number >= 1 or null"},
            "python": {"type": "string", "description": "a string"},
            "torch": {"type": ["string", "null"], "description": "a string or null"},
            "threads": {"type": ["integer", "null"], "minimum": 1, "description": "a whole number >= 1 or null"},
        },
    },
    "provenance": {
        "type": "object",
        "required": ["command", "git_commit", "git_dirty", "date", "hardware"],
        "properties": {
            "command": {"type": "string", "description": "a string"},
            "git_commit": {"type": ["string", "null"], "description": "a string or null (outside git)"},
            "git_dirty": {"type": ["boolean", "null"], "description": "true, false or null (outside git)"},
            "date": {"type": "string", "description": "an ISO 8601 date"},  # parsed in Python
            "hardware": {"$ref": "#/$defs/hardware"},
        },
    },
}


def _record(title: str, metrics: dict, config: dict | None = None) -> dict:
    """A complete record schema with these ``metrics`` (and ``config``) and the shared ``$defs``."""
    return {
        "$schema": DRAFT,
        "title": title,
        "type": "object",
        "required": ["schema", "method", "dataset", "config", "seed", "provenance", "metrics"],
        "properties": {
            "schema": {"const": "mvssl-results/1"},
            "method": {"$ref": "#/$defs/text"},
            "dataset": {"$ref": "#/$defs/text"},
            "config": config if config is not None else {"type": "object", "description": "an object"},
            "seed": {"$ref": "#/$defs/seed"},
            "provenance": {"$ref": "#/$defs/provenance"},
            "metrics": metrics,
        },
        "$defs": copy.deepcopy(DEFS),
    }


RECORD = _record("any results record (mvssl-results/1)",
                 {"type": "object", "minProperties": 1, "description": "a non-empty object"})

RUN = _record(
    "one training run (mvssl_core.runstate.run_record), or one evaluation (mvssl_core evaluate --results)",
    {
        "type": "object", "required": ["final"], "minProperties": 1,
        "properties": {
            "steps": {"$ref": "#/$defs/count"},            # optimizer steps of the whole run
            "step": {"$ref": "#/$defs/size"},              # evaluate: the checkpoint's step
            "checkpoint": {"type": "string", "description": "a string"},
            "history": {"$ref": "#/$defs/history"},
            "last": {"type": "object", "description": "an object"},
            "final": {"$ref": "#/$defs/final"},
            # mvssl_core linear-eval (scripts/linear_eval.sh) adds the probe of the frozen backbone
            "linear_eval": {
                "type": "object", "required": ["top1", "top5"],
                "properties": {"top1": {"$ref": "#/$defs/fraction"}, "top5": {"$ref": "#/$defs/fraction"},
                               "train_top1": {"$ref": "#/$defs/fraction"}},
            },
        },
    },
    {"type": "object", "required": ["method", "seed"],
     "properties": {"method": {"$ref": "#/$defs/text"}, "seed": {"$ref": "#/$defs/seed"}}},
)

EXPERIMENT = _record(
    "many pre-training runs of scripts/experiments/ssl_runs.py",
    {
        "type": "object", "required": ["runs", "random_init"],
        "properties": {
            "runs": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "family", "method", "variant", "seed", "batch_size", "epochs", "labels",
                                 "steps", "history", "final", "config"],
                    "properties": {
                        "name": {"$ref": "#/$defs/text"},
                        "family": {"$ref": "#/$defs/text"},
                        "method": {"$ref": "#/$defs/text"},  # a key of mvssl_core.methods.METHODS (in Python)
                        "variant": {"$ref": "#/$defs/text"},
                        "seed": {"$ref": "#/$defs/seed"},
                        "batch_size": {"$ref": "#/$defs/count"},
                        "epochs": {"$ref": "#/$defs/count"},
                        "labels": {"type": "object", "description": "an object"},
                        "steps": {"$ref": "#/$defs/count"},
                        "history": {"$ref": "#/$defs/history"},
                        "final": {"allOf": [{"$ref": "#/$defs/final"}, {"required": ["knn_top1", "linear_top1"]}]},
                        "seconds": {"$ref": "#/$defs/seconds"},
                        "config": {"type": "object", "required": ["resolved"],
                                   "properties": {"resolved": {"type": "object", "description": "an object"}},
                                   "description": "an object"},
                    },
                },
                "description": "a non-empty list of runs",
            },
            # the untrained backbone, per seed: the floor every run should beat
            "random_init": {
                "type": "array", "minItems": 1,
                "items": {
                    "allOf": [{"$ref": "#/$defs/final"}],
                    "type": "object", "required": ["seed", "knn_top1", "linear_top1"],
                    "properties": {"seed": {"$ref": "#/$defs/seed"}},
                },
                "description": "a non-empty list (one entry per seed)",
            },
            "wall_seconds": {"$ref": "#/$defs/seconds"},
        },
    },
)

_STAGE = {
    "type": "object", "required": ["mi", "rho", "n", "mean", "sd"],
    "properties": {
        "mi": {"type": "number", "minimum": 0, "description": "a mutual information in nats >= 0"},
        "rho": {"type": "number", "minimum": -1, "maximum": 1, "description": "a correlation in [-1, 1]"},
        "n": {"$ref": "#/$defs/size"},
        "mean": {"$ref": "#/$defs/value"},
        "sd": {"type": ["number", "null"], "minimum": 0, "description": "a standard deviation >= 0, or null"},
    },
    "additionalProperties": {"$ref": "#/$defs/value"},
}

CRITICS = _record(
    "MI critics of scripts/experiments/train_critics.py",
    {
        "type": "object", "required": ["runs", "log_k"],
        "properties": {
            "runs": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "objective", "critic", "batch_size", "family", "seed", "step", "estimate",
                                 "true_mi", "stages"],
                    "properties": {
                        "name": {"$ref": "#/$defs/text"},
                        "objective": {"enum": ["infonce", "nwj", "er"]},
                        "critic": {"enum": ["separable", "concat", "gaussian_q"]},
                        "batch_size": {"$ref": "#/$defs/count"},
                        "family": {"$ref": "#/$defs/text"},
                        "seed": {"$ref": "#/$defs/seed"},
                        "seconds": {"$ref": "#/$defs/seconds"},
                        "skipped_nonfinite_steps": {"$ref": "#/$defs/size"},
                        "step": {"$ref": "#/$defs/steps"},
                        "estimate": {"$ref": "#/$defs/curve"},
                        "true_mi": {"type": "array", "items": {"type": "number", "minimum": 0,
                                                               "description": "a mutual information >= 0"}},
                        "stages": {"type": "array", "minItems": 1, "items": _STAGE,
                                   "description": "a non-empty list of stages"},
                    },
                },
                "description": "a non-empty list of runs",
            },
            "log_k": {"type": "object", "minProperties": 1,
                      "additionalProperties": {"type": "number", "minimum": 0, "description": "log K >= 0"},
                      "description": "an object {batch size: log batch size}"},
        },
    },
    {"type": "object", "required": ["mis", "batch_sizes", "critics", "objectives"]},
)

MI_NOT_ENOUGH = _record(
    "bijective encoders of scripts/experiments/mi_not_enough.py",
    {
        "type": "object", "required": ["runs", "log_k", "raw_pixels"],
        "properties": {
            "runs": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object", "required": ["name", "objective", "seed", "curve"],
                    "properties": {
                        "name": {"$ref": "#/$defs/text"},
                        "objective": {"$ref": "#/$defs/text"},  # a key of mvssl_core.mi_not_enough.OBJECTIVES
                        "seed": {"$ref": "#/$defs/seed"},
                        "seconds": {"$ref": "#/$defs/seconds"},
                        "curve": {
                            "type": "object",
                            "required": ["step", "infonce_train", "infonce_test", "probe_train_top1",
                                         "probe_test_top1"],
                            "properties": {"step": {"$ref": "#/$defs/steps"},
                                           "probe_train_top1": {"type": "array",
                                                                "items": {"$ref": "#/$defs/fraction_or_null"}},
                                           "probe_test_top1": {"type": "array",
                                                               "items": {"$ref": "#/$defs/fraction_or_null"}}},
                            "additionalProperties": {"$ref": "#/$defs/curve"},
                        },
                    },
                },
                "description": "a non-empty list of runs",
            },
            "log_k": {"type": "number", "minimum": 0, "description": "log K >= 0"},
            "raw_pixels": {"type": "object", "required": ["probe_train_top1", "probe_test_top1"],
                           "properties": {"probe_train_top1": {"$ref": "#/$defs/fraction"},
                                          "probe_test_top1": {"$ref": "#/$defs/fraction"}}},
            "n_train": {"$ref": "#/$defs/count"},
            "n_test": {"$ref": "#/$defs/count"},
            "wall_seconds": {"$ref": "#/$defs/seconds"},
        },
    },
    {"type": "object", "required": ["objectives", "seeds"]},
)

# book/data/published_imagenet.yaml (YAML, read by mvssl_core.experiments.load_published): accuracies reported by
# others, in percent. Across fields (checked in Python): one delta per setting of deltas_at, settings distinct,
# top1 + delta in [0, 100], each method once per table.
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100, "description": "a percentage in [0, 100]"}
PUBLISHED = {
    "$schema": DRAFT,
    "title": "published accuracies (book/data/published_imagenet.yaml)",
    "type": "object", "required": ["source", "metric", "tables"],
    "description": "a mapping with 'source', 'metric' and 'tables'",
    "properties": {
        "source": {"type": "object", "required": ["key", "title", "venue", "openreview", "note"],
                   "additionalProperties": {"$ref": "#/$defs/text"}, "description": "a mapping"},
        "metric": {"$ref": "#/$defs/text"},
        "tables": {
            "type": "object", "minProperties": 1, "description": "a mapping of tables",
            "additionalProperties": {
                "type": "object", "required": ["title", "varies", "fixed", "reference", "deltas_at", "rows"],
                "description": "a mapping",
                "properties": {
                    "title": {"$ref": "#/$defs/text"},
                    "varies": {"$ref": "#/$defs/text"},
                    "fixed": {"type": "object", "additionalProperties": {"$ref": "#/$defs/count"},
                              "description": "a mapping of settings"},
                    "reference": {"$ref": "#/$defs/count"},
                    "deltas_at": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/count"},
                                  "description": "a non-empty list of whole numbers >= 1"},
                    "rows": {
                        "type": "array", "minItems": 1, "description": "a non-empty list of rows",
                        "items": {
                            "type": "object", "required": ["method", "top1", "deltas"],
                            "description": "a mapping {method, top1, deltas}",
                            "properties": {
                                "method": {"$ref": "#/$defs/text"},
                                "top1": _PERCENT,
                                "deltas": {"type": "array",
                                           "items": {"type": "number", "minimum": -100, "maximum": 100,
                                                     "description": "a change in points in [-100, 100]"},
                                           "description": "a list of changes in points"},
                            },
                        },
                    },
                },
            },
        },
    },
    "$defs": copy.deepcopy(DEFS),
}

SCHEMAS = {"record": RECORD, "run": RUN, "experiment": EXPERIMENT, "critics": CRITICS, "mi_not_enough": MI_NOT_ENOUGH,
           "published": PUBLISHED}
"""Kind of results file -> its schema (see :func:`mvssl_core.results.record_kind`; ``published`` is YAML)."""
