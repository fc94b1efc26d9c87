"""scripts/bench_overhead.py (issue 13 item 7): its ``--quick`` smoke run prints every part, old and new.

The script runs as a command, as a user runs it (it imports the installed ``mvssl_core``)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"


def test_quick_smoke_run_prints_every_part():
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--cpu"], cwd=BENCH.parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| part")}
    assert list(rows) == ["LARS step", "vMF log-normaliser", "Sinkhorn", "effective rank"]
    for size, old, new, ratio, note in rows.values():
        assert float(old) > 0 and float(new) > 0 and ratio.strip().endswith("x")
    ops = rows["LARS step"][4].split()  # "operators per step OLD -> NEW"
    assert int(ops[-3]) > 5 * int(ops[-1])
    assert float(rows["Sinkhorn"][4].split()[-1]) < 1e-4  # max relative difference of the codes
    assert float(rows["effective rank"][4].split()[-1]) < 1e-4


def test_refuses_a_bad_repeat_count():
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "0"], cwd=BENCH.parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--repeats must be >= 1, got 0" in done.stderr
