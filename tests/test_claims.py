"""mvssl_core.claims: entropy range, collapse, health, verdicts (with their error rates), provenance."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mvssl_core import claims
from mvssl_core.bounds import er_bound_discrete
from mvssl_core.claims import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Effect, health,
                               health_markdown, one_sample, pool, verdict, welch)
from mvssl_core.entropy import kde_entropy
from mvssl_core.losses import byol_loss, deepcluster_loss, dino_loss, nt_xent, swav_loss
from mvssl_core.reconstruction import vmf_log_likelihood
from mvssl_core.results import ResultsError, provenance, write_results
from mvssl_core.special import vmf_log_normalizer

# ------------------------------------------------------------------------------------------------
# Floors and ceilings against the estimator itself


@pytest.mark.parametrize("d, kappa", [(8, 10.0), (64, 10.0), (256, 50.0)])
def test_floor_is_the_entropy_of_identical_points(d, kappa):
    z = torch.randn(1, d, dtype=torch.float64).repeat(16, 1)
    assert float(kde_entropy(z, kappa=kappa)) == pytest.approx(claims.vmf_kde_floor(d, kappa), abs=1e-9)
    assert claims.vmf_kde_floor(d, kappa) == pytest.approx(-float(vmf_log_normalizer(d, kappa)) - kappa)
    rec = vmf_log_likelihood(z, z, kappa=kappa)
    assert float(rec) == pytest.approx(claims.vmf_reconstruction_max(d, kappa), abs=1e-9)


@pytest.mark.parametrize("k, d", [(4, 8), (16, 16), (32, 64)])
def test_ceiling_is_approached_by_far_apart_points_and_never_passed(k, d):
    kappa = 60.0
    z = torch.eye(d, dtype=torch.float64)[:k]  # orthonormal: each kernel sum is e^kappa + (k - 1)
    ceiling = claims.vmf_kde_ceiling(k, d, kappa)
    assert ceiling == pytest.approx(claims.vmf_kde_floor(d, kappa) + math.log(k))
    exact = ceiling - math.log1p((k - 1) * math.exp(-kappa))
    assert float(kde_entropy(z, kappa=kappa)) == pytest.approx(exact, abs=1e-9)
    assert abs(ceiling - float(kde_entropy(z, kappa=kappa))) < 1e-9  # (k - 1) e^-60 is negligible
    for kap in (0.5, 5.0, 20.0):
        spread = torch.randn(k, d, dtype=torch.float64)
        assert float(kde_entropy(spread, kappa=kap)) <= claims.vmf_kde_ceiling(k, d, kap) + 1e-9


def test_floor_arguments_are_checked():
    with pytest.raises(ValueError, match="kappa"):
        claims.vmf_kde_floor(8, 0.0)
    with pytest.raises(ValueError, match="d"):
        claims.vmf_kde_floor(1, 1.0)
    with pytest.raises(ValueError, match="k"):
        claims.vmf_kde_ceiling(0, 8, 1.0)


# ------------------------------------------------------------------------------------------------
# Collapse

K, D, KAPPA = 128, 64, 10.0
FLOOR = claims.vmf_kde_floor(D, KAPPA)
NEEDED = claims.COLLAPSE_FRACTION * math.log(K)


def make_run(margin=3.0, rank=20.0, loss=1.0, knn=0.95, linear=0.96, method="swav", seed=0, n=12,
             resolved=None):
    """A run dict of the stored layout whose last logged values are the given ones."""
    resolved = {"projection_dim": D, "monitor_kappa": KAPPA, "n_prototypes": 30, "head_out": 256} \
        if resolved is None else resolved
    return {
        "name": f"{method}/ref/s{seed}", "family": method.removesuffix("_er"), "method": method,
        "variant": "ref", "seed": seed, "batch_size": K, "epochs": 1, "labels": {}, "steps": 10 * n,
        "history": {"step": list(range(0, 10 * n, 10)),
                    "entropy": [FLOOR + 4.0] * (n - 5) + [FLOOR + margin] * 5,
                    "effective_rank": [30.0] * (n - 5) + [rank] * 5,
                    "loss": [5.0] * (n - 5) + [loss] * 5},
        "final": {"knn_top1": knn, "linear_top1": linear},
        "config": {"hyper": {}, "resolved": resolved},
    }


RANDOM_INIT = [{"seed": 0, "knn_top1": 0.88, "linear_top1": 0.90}, {"seed": 1, "knn_top1": 0.80, "linear_top1": 0.70}]


def test_collapse_threshold():
    assert claims.entropy_margin(FLOOR + 0.3, K, D, KAPPA) == pytest.approx(0.3)
    assert claims.is_collapsed(FLOOR + 0.99 * NEEDED, K, D, KAPPA)
    assert not claims.is_collapsed(FLOOR + 1.01 * NEEDED, K, D, KAPPA)
    assert claims.is_collapsed(FLOOR - 1e-4, K, D, KAPPA)  # float32 rounding below the floor


def test_run_collapsed_uses_the_last_finite_values():
    assert claims.run_collapsed(make_run(margin=0.01))
    assert not claims.run_collapsed(make_run(margin=2.0))
    run = make_run(margin=0.01)
    run["history"]["entropy"][-2:] = [None, None]  # a non-finite value is stored as null
    assert claims.run_collapsed(run, last=3)  # the last 3 finite: all at the floor
    assert not claims.run_collapsed(run, last=7)  # mean pulled up by the 4-nat values
    run["history"]["entropy"] = [None] * len(run["history"]["step"])
    with pytest.raises(ResultsError, match="history.entropy"):
        claims.run_collapsed(run)


@pytest.mark.parametrize("missing", ["projection_dim", "monitor_kappa"])
def test_run_collapsed_without_resolved_config_names_run_and_field(missing):
    run = make_run()
    del run["config"]["resolved"][missing]
    with pytest.raises(ResultsError, match=rf"swav/ref/s0.*config\.resolved\.{missing}"):
        claims.run_collapsed(run)
    del run["config"]["resolved"]
    with pytest.raises(ResultsError, match="swav/ref/s0"):
        claims.health(run, RANDOM_INIT)


# ------------------------------------------------------------------------------------------------
# Trivial losses: the closed forms against the library's losses


@pytest.mark.parametrize("n", [2, 8, 64])
def test_trivial_simclr_is_nt_xent_of_collapsed_embeddings(n):
    z = torch.randn(1, 16, dtype=torch.float64).repeat(n, 1)
    assert float(nt_xent(z, z.clone(), temperature=0.2)) == pytest.approx(claims.trivial_loss("simclr", n, {}))
    assert claims.trivial_loss("simclr", n, {}) == pytest.approx(math.log(2 * n - 1))


@pytest.mark.parametrize("k", [3, 30, 300])
def test_trivial_clustering_losses_are_log_k(k):
    n = 8
    flat = torch.zeros(n, k, dtype=torch.float64)  # uniform predictions, whatever the targets
    codes = torch.softmax(torch.randn(n, k, dtype=torch.float64), dim=1)
    targets = torch.randint(0, k, (n,))
    resolved = {"n_prototypes": k, "head_out": k}
    for method, value in [("swav", swav_loss([flat, flat], [codes])),
                          ("dino", dino_loss([flat, flat], [torch.randn(n, k, dtype=torch.float64)],
                                             torch.zeros(k, dtype=torch.float64))),
                          ("deepcluster", deepcluster_loss([flat], [targets]))]:
        assert float(value) == pytest.approx(claims.trivial_loss(method, n, resolved), abs=1e-12)
        assert claims.trivial_loss(method, n, resolved) == pytest.approx(math.log(k))
    assert claims.trivial_loss("deepcluster", n, {"n_prototypes": [k, k]}) == pytest.approx(math.log(k))


@pytest.mark.parametrize("method", ["swav_er", "dino_er", "deepcluster_er"])
def test_trivial_discrete_er_loss_is_zero(method):
    flat = torch.zeros(8, 30, dtype=torch.float64)
    bound = er_bound_discrete(flat, flat)
    assert float(bound.entropy) == pytest.approx(math.log(30))
    assert float(bound.reconstruction) == pytest.approx(-math.log(30))
    assert float(-bound.bound) == pytest.approx(claims.trivial_loss(method, 8, {}), abs=1e-12)


@pytest.mark.parametrize("method,key", [("swav_er", "n_prototypes"), ("dino_er", "head_out"),
                                        ("deepcluster_er", "n_prototypes")])
def test_trivial_loss_of_one_term_alone(method, key):
    """Reconstruction alone: the loss is the cross-entropy, log K for uniform assignments (measured here on
    the discrete bound); entropy alone: uniform assignments are its optimum, so no trivial value."""
    flat = torch.zeros(8, 30, dtype=torch.float64)
    bound = er_bound_discrete(flat, flat)
    resolved = {key: 30, "er_terms": "reconstruction"}
    assert float(-bound.reconstruction) == pytest.approx(claims.trivial_loss(method, 8, resolved), abs=1e-12)
    assert claims.trivial_loss(method, 8, {key: 30, "er_terms": "entropy"}) is None
    assert claims.trivial_loss(method, 8, {key: 30, "er_terms": "both"}) == 0.0
    with pytest.raises(ResultsError, match="er_terms"):
        claims.trivial_loss(method, 8, {key: 30, "er_terms": "neither"})
    with pytest.raises(ResultsError, match=key):
        claims.trivial_loss(method, 8, {"er_terms": "reconstruction"})


def test_no_trivial_loss_where_collapse_is_free():
    z = torch.randn(4, 8)
    assert float(byol_loss(z, z)) == pytest.approx(0.0, abs=1e-6)  # collapse costs BYOL nothing
    for method in ("byol", "byol_er", "simclr_er"):
        assert claims.trivial_loss(method, 8, {}) is None
    with pytest.raises(ValueError, match="method"):
        claims.trivial_loss("mocov3", 8, {})
    with pytest.raises(ResultsError, match="head_out"):
        claims.trivial_loss("dino", 8, {"n_prototypes": 3})


# ------------------------------------------------------------------------------------------------
# Health


def test_healthy_run():
    h = health(make_run(loss=2.0), RANDOM_INIT)
    assert h.trains and h.failures == ()
    assert h.effective_rank == 20.0 and h.entropy_margin == pytest.approx(3.0) and h.loss == 2.0
    assert h.margin_needed == pytest.approx(NEEDED) and h.trivial_loss == pytest.approx(math.log(30))
    assert (h.knn_untrained, h.linear_untrained) == (0.88, 0.90)


def test_every_failure_is_named():
    run = make_run(margin=0.01, rank=1.02, loss=math.log(30) - 0.0004, knn=0.71, seed=1)
    h = health(run, RANDOM_INIT)
    assert not h.trains
    assert h.failures == (
        "effective rank 1.02 <= 2",
        f"entropy 0.01 nats above the floor < {NEEDED:.2f} needed",
        f"loss {math.log(30) - 0.0004:.4f} not below its trivial value log K = {math.log(30):.4f} - 0.05",
        "kNN 71.0% not above the untrained backbone's 80.0%",
    )
    assert health(make_run(knn=0.85, seed=7), RANDOM_INIT).knn_untrained == pytest.approx(0.84)  # mean of seeds
    byol = health(make_run(method="byol", loss=0.0), RANDOM_INIT)  # BYOL: no loss criterion
    assert byol.trains and byol.trivial_loss is None
    nan = make_run()
    nan["history"]["effective_rank"] = [None] * len(nan["history"]["step"])
    assert "effective rank nan <= 2" in health(nan, RANDOM_INIT).failures


def test_health_table_and_markdown():
    record = {"metrics": {"runs": [make_run(loss=2.0), make_run(method="byol", rank=1.0, seed=1)],
                          "random_init": RANDOM_INIT}}
    table = claims.health_table(record)
    assert [h.trains for h in table] == [True, False]
    text = health_markdown(table)
    lines = text.splitlines()
    assert lines[0] == ("| run | effective rank | entropy above floor (needed) | loss (trivial) | kNN (untrained) "
                        "| linear (untrained) | trains? |")
    assert len(lines) == 4 and all(line.count("|") == 8 for line in lines)
    assert lines[2] == (f"| swav/ref/s0 | 20.00 | 3.00 ({NEEDED:.2f}) | 2.0000 ({math.log(30):.4f}) "
                        "| 95.0% (88.0%) | 96.0% (90.0%) | yes |")
    assert "| 1.0000 (—) |" in lines[3] and lines[3].endswith("| no: effective rank 1.00 <= 2 |")
    assert health_markdown(table, label=lambda h: h.method).splitlines()[2].startswith("| swav |")


# ------------------------------------------------------------------------------------------------
# Welch's test and the verdict rule


def test_welch_matches_scipy_and_the_hand_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 3.0, 7)
    e = welch(a, b, alpha=0.1)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert (e.t, e.p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 7
    dof = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 6)
    half = stats.t.ppf(0.95, dof) * math.sqrt(va + vb)
    diff = a.mean() - b.mean()
    assert (e.diff, e.dof, e.low, e.high) == pytest.approx((diff, dof, diff - half, diff + half))
    assert (e.n_a, e.n_b) == (5, 7)


def test_one_sample_matches_scipy():
    a = np.array([0.3, 0.5, 0.1, 0.7])
    e = one_sample(a, 0.2)
    ref = stats.ttest_1samp(a, 0.2)
    assert (e.t, e.p, e.dof) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 3.0)
    half = stats.t.ppf(0.975, 3) * a.std(ddof=1) / 2
    assert (e.low, e.high) == pytest.approx((a.mean() - 0.2 - half, a.mean() - 0.2 + half))
    assert e.n_b == 0


def test_degenerate_groups_are_deterministic():
    one = welch([1.0], [0.0, 0.1, 0.2])
    assert (one.low, one.high) == (-math.inf, math.inf) and verdict(one, 1) == INCONCLUSIVE
    same = welch([0.1, 0.1, 0.1], [0.1, 0.1])
    assert (same.low, same.high, same.p) == (0.0, 0.0, 1.0) and verdict(same, 1) == INCONCLUSIVE
    apart = welch([0.3, 0.3, 0.3], [0.1, 0.1])
    assert apart.low == apart.high == pytest.approx(0.2) and apart.p == 0.0
    assert verdict(apart, 1) == REPRODUCED and verdict(apart, -1) == NOT_REPRODUCED
    assert one_sample([2.0, 2.0], 1.0).low == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="^a must hold finite"):
        welch([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="^b must hold finite"):
        welch([1.0, 2.0], [math.nan, 2.0])
    with pytest.raises(ValueError, match="mu"):
        one_sample([1.0, 2.0], math.nan)
    with pytest.raises(ValueError, match="alpha"):
        welch([1.0, 2.0], [1.0, 2.0], alpha=1.5)
    e = welch([1.0, 2.0], [1.0, 2.0])
    for direction in (0, 2, True):
        with pytest.raises(ValueError, match="direction"):
            verdict(e, direction)
    with pytest.raises(ValueError, match="min_effect"):
        verdict(e, 1, min_effect=-1.0)


def test_verdict_rule():
    e = Effect(diff=1.0, low=0.5, high=1.5, t=4.0, dof=8.0, p=0.004, n_a=5, n_b=5)
    assert verdict(e, 1) == REPRODUCED and verdict(e, -1) == NOT_REPRODUCED
    assert verdict(e, 1, min_effect=0.6) == INCONCLUSIVE  # significant, but not by the stated amount
    assert verdict(e, 1, trains=False) == NOT_TESTABLE
    straddles = Effect(0.2, -0.1, 0.5, 1.0, 8.0, 0.3, 5, 5)
    assert verdict(straddles, 1) == verdict(straddles, -1) == INCONCLUSIVE


@pytest.mark.parametrize("sd_b", [1.0, 3.0])
def test_false_positive_rate_is_at_most_alpha_over_two(sd_b):
    """Equal means: P(REPRODUCED) <= alpha / 2 (the docstring's rate), measured by simulation."""
    rng = np.random.default_rng(1234)
    draws, alpha = 4000, 0.05
    hits = {1: 0, -1: 0}
    for _ in range(draws):
        e = welch(rng.normal(0.0, 1.0, 5), rng.normal(0.0, sd_b, 5), alpha=alpha)
        for direction in hits:
            hits[direction] += verdict(e, direction) == REPRODUCED
    stated = alpha / 2
    tolerance = 3 * math.sqrt(stated * (1 - stated) / draws)
    for direction, count in hits.items():
        assert count / draws <= stated + tolerance, (direction, count / draws)


def test_a_real_effect_is_detected():
    rng = np.random.default_rng(99)
    draws = 1000
    found = sum(verdict(welch(rng.normal(3.0, 1.0, 5), rng.normal(0.0, 1.0, 5)), 1) == REPRODUCED
                for _ in range(draws))
    assert found / draws > 0.9
    missed = sum(verdict(one_sample(rng.normal(-3.0, 1.0, 5), 0.0), -1) == REPRODUCED for _ in range(draws))
    assert missed / draws > 0.9


def test_pool():
    assert pool([REPRODUCED] * 3) == REPRODUCED
    assert pool([NOT_TESTABLE, NOT_TESTABLE]) == NOT_TESTABLE
    assert pool([INCONCLUSIVE, REPRODUCED, REPRODUCED]) == "mixed: 2 reproduced, 1 inconclusive"
    assert pool([NOT_TESTABLE, NOT_REPRODUCED]) == ("mixed: 1 not reproduced, "
                                                    "1 not testable: the method did not train")
    with pytest.raises(ValueError, match="verdicts"):
        pool([])
    with pytest.raises(ValueError, match="verdicts"):
        pool(["maybe"])


# ------------------------------------------------------------------------------------------------
# Provenance and loading


def make_record(command="python scripts/experiments/ssl_runs.py dynamics --jobs 2", dirty=False, wall=499.2):
    prov = provenance(command=command)
    prov.update(git_commit="abc123def4567890", git_dirty=dirty, date="2026-12-03T10:00:00+00:00")
    prov["hardware"].update(cpu="Intel Xeon", cpu_count=2, threads=1, torch="2.14.1")
    metrics = {"runs": [make_run()], "random_init": RANDOM_INIT}
    if wall is not None:
        metrics["wall_seconds"] = wall
    return {"schema": "mvssl-results/1", "method": "ssl runs", "dataset": "digits", "config": {}, "seed": 0,
            "provenance": prov, "metrics": metrics}


def test_provenance_line(tmp_path):
    root = claims._root_of(claims.Path(claims.__file__))
    line = claims.provenance_line(make_record(), root / "results" / "ssl" / "dynamics.json")
    assert line == ("**Data:** `results/ssl/dynamics.json`, written by "
                    "`python scripts/experiments/ssl_runs.py dynamics --jobs 2` at commit `abc123def456` "
                    "on 2026-12-03 (Intel Xeon, 2 cores, one thread per run, torch 2.14.1); wall time 8 min.")
    record = make_record(command=f"python s.py --out {tmp_path}/x.json --out-dir=/tmp/y --jobs 2 --out results/z.json",
                         wall=None)
    record["provenance"]["git_commit"] = None
    line = claims.provenance_line(record, tmp_path / "x.json")
    assert line == ("**Data:** `x.json`, written by `python s.py --jobs 2 --out results/z.json` outside a git "
                    "checkout on 2026-12-03 (Intel Xeon, 2 cores, one thread per run, torch 2.14.1).")
    assert "(with uncommitted changes)" in claims.provenance_line(make_record(dirty=True), tmp_path / "x.json")


def test_load_or_explain(tmp_path):
    path = tmp_path / "runs.json"
    write_results(path, make_record())
    assert claims.load_or_explain(path, "python make.py")["metrics"]["runs"][0]["name"] == "swav/ref/s0"
    with pytest.raises(FileNotFoundError) as err:
        claims.load_or_explain(tmp_path / "none.json", "python make.py")
    assert str(err.value) == (f"{tmp_path / 'none.json'} is missing. This page needs the stored runs: "
                              "produce them with `python make.py`")
    bad = json.loads(path.read_text())
    del bad["metrics"]["runs"][0]["seed"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"'seed' is missing\. Re-run `python make\.py`\.$"):
        claims.load_or_explain(path, "python make.py")
    path.write_text("{not json")
    with pytest.raises(ResultsError, match=r"not valid JSON.*Re-run `python make\.py`\.$"):
        claims.load_or_explain(path, "python make.py")
