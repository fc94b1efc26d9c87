"""Time and peak memory of the KDE entropy (dense vs chunked) and InfoNCE, forward + backward, on CPU.

Usage:
    python scripts/bench_core.py            # N in 1024, 4096, 16384, 65536; d = 256; float32
    python scripts/bench_core.py --quick    # N in 256, 1024: a smoke run of a few seconds

Method. Every (case, N) runs in a fresh Python subprocess, so no case inherits another's allocator
state. The worker builds its inputs, does one small warm-up, records its resident set size (VmRSS),
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), runs
forward + backward once and reads the peak (VmHWM). "Peak memory" is VmHWM minus the RSS before the
run: everything the evaluation and its backward held at once, as the operating system saw it
(torch's CPU allocator has no peak counter of its own, and tracemalloc does not see torch's
allocations). Where clear_refs is not writable, the worker falls back to sampling VmRSS every
millisecond in a thread (which can miss short spikes; the output then says so). Time is the
minimum wall-clock time over the forward + backward runs (the measured run plus repeats; the
minimum is the least disturbed by other processes on a shared machine, whose load average is
printed before and after).

Targets checked at the end: chunked within 1.2x the dense time, and at N = 16384 at most a tenth
of the dense peak memory.

Dense KDE and InfoNCE are skipped at N = 65536: a float32 65536 x 65536 score matrix alone is
16 GiB, and autograd holds several of them. The chunked KDE never forms it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

FULL_NS = (1024, 4096, 16384, 65536)
QUICK_NS = (256, 1024)
DENSE_MAX_N = 16384  # 4 GiB per N x N float32 matrix at 16384; 16 GiB at 65536 does not fit
KAPPA = 10.0
TEMPERATURE = 0.1


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Fallback: poll VmRSS every millisecond and keep the maximum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_mb("VmRSS")
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _status_mb("VmRSS"))
            time.sleep(0.001)


def _make_case(case: str, n: int, d: int, chunk: str | int | None):
    import torch

    from mvssl_core import entropy

    g = torch.Generator().manual_seed(0)
    if case == "infonce":
        try:
            from mvssl_core.bounds import infonce_from_embeddings as infonce

            label = "mvssl_core.bounds.infonce_from_embeddings"
        except ImportError:  # plain torch, labelled as such

            def infonce(z1, z2, temperature):
                q, k = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
                logits = q @ k.T / temperature
                return torch.log(torch.tensor(float(len(q)))) + (logits.diagonal() - logits.logsumexp(1)).mean()

            label = "plain torch InfoNCE (bounds.py unavailable)"
        z1 = torch.randn(n, d, generator=g).requires_grad_()
        z2 = torch.randn(n, d, generator=g).requires_grad_()

        def step():
            z1.grad = z2.grad = None
            infonce(z1, z2, temperature=TEMPERATURE).backward()

        return step, label
    z = torch.randn(n, d, generator=g).requires_grad_()
    chunk_size = None if case == "dense" else chunk

    def step():
        z.grad = None
        entropy.kde_entropy(z, kappa=KAPPA, chunk_size=chunk_size).backward()

    label = "kde_entropy(vmf, joe) " + ("dense" if chunk_size is None else f"chunk_size={chunk_size!r}")
    return step, label


def worker(case: str, n: int, d: int, chunk: str | int | None, repeats: int) -> dict:
    import torch

    # warm-up on a small batch: thread pools, BLAS and allocator start-up are not the case's cost
    small, _ = _make_case(case, 64, d, chunk)
    small()
    step, label = _make_case(case, n, d, chunk)
    base = _status_mb("VmRSS")
    exact = _reset_peak()
    sampler = None
    if not exact:
        sampler = _Sampler()
        sampler.start()
    t0 = time.perf_counter()
    step()
    times = [time.perf_counter() - t0]
    if exact:
        peak = _status_mb("VmHWM")
    else:
        sampler.stop.set()
        sampler.join()
        peak = sampler.peak
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    from mvssl_core import entropy

    return {
        "case": case,
        "n": n,
        "d": d,
        "label": label,
        "chunk_rows": entropy.auto_chunk_size(n, n) if chunk == "auto" and case == "chunked" else chunk,
        "time_s": min(times),
        "runs": len(times),
        "all_times_s": [round(t, 4) for t in times],
        "peak_mib": peak - base,
        "peak_method": "VmHWM after clear_refs" if exact else "VmRSS sampled every 1 ms",
        "threads": torch.get_num_threads(),
    }


def run_case(case: str, n: int, d: int, chunk: str, repeats: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, str(n), str(d), chunk, str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {case} N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _repeats(n: int) -> int:
    # small cases are cheap: more runs make an undisturbed one likely on a shared machine
    return 20 if n <= 1024 else 5 if n <= 4096 else 2 if n <= 16384 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N only: a smoke run")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", default="auto", help="chunk_size for the chunked KDE: 'auto' or rows")
    parser.add_argument("--ns", type=int, nargs="*", help="batch sizes (default: 1024 4096 16384 65536)")
    parser.add_argument("--cases", nargs="*", default=["dense", "chunked", "infonce"], help="subset of the cases")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, n, d, chunk, repeats = args.worker
        chunk_arg = chunk if chunk == "auto" else int(chunk)
        print(json.dumps(worker(case, int(n), int(d), chunk_arg, int(repeats))))
        return

    ns = args.ns or (QUICK_NS if args.quick else FULL_NS)
    load = os.getloadavg()
    print(f"KDE entropy (vMF, kappa={KAPPA}, Joe) and InfoNCE (tau={TEMPERATURE}), forward + backward,")
    print(f"CPU float32, d = {args.dim}, one fresh subprocess per case; peak = extra resident memory of the run.")
    header = f"{'N':>6} {'case':<9} {'rows/chunk':>10} {'time s':>9} {'runs':>5} {'peak MiB':>10}"
    print(header)
    print("-" * len(header))
    rows, ratios = [], {}
    for n in ns:
        results = {}
        for case in args.cases:
            if case != "chunked" and n > DENSE_MAX_N:
                print(f"{n:>6} {case:<9} {'':>10} {'skipped: N x N float32 = %.0f GiB' % (n * n * 4 / 2**30)}")
                continue
            r = run_case(case, n, args.dim, args.chunk, _repeats(n))
            results[case] = r
            rows.append(r)
            chunk = r["chunk_rows"] if case == "chunked" else "-"
            line = f"{n:>6} {case:<9} {chunk!s:>10} {r['time_s']:>9.3f} {r['runs']:>5} {r['peak_mib']:>10.1f}"
            print(line, flush=True)
        if "dense" in results and "chunked" in results:
            dn, ch = results["dense"], results["chunked"]
            ratios[n] = (ch["time_s"] / dn["time_s"], ch["peak_mib"] / max(dn["peak_mib"], 1e-9))
            print(
                f"{n:>6} ratio chunked/dense: time {ch['time_s'] / dn['time_s']:.2f}x, "
                f"peak memory {ch['peak_mib'] / max(dn['peak_mib'], 1e-9):.3f}x",
                flush=True,
            )
    labels = sorted({r["label"] for r in rows})
    methods = sorted({r["peak_method"] for r in rows})
    print("cases: " + "; ".join(labels))
    print(f"peak memory method: {', '.join(methods)}; torch threads: {rows[0]['threads']}")
    print(f"load average (1 min) before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if ratios:
        worst = max(ratios, key=lambda n: ratios[n][0])
        verdict = "met" if ratios[worst][0] <= 1.2 else "NOT met"
        print(f"target time chunked <= 1.2x dense: {verdict} (worst {ratios[worst][0]:.2f}x at N = {worst})")
    if 16384 in ratios:
        verdict = "met" if ratios[16384][1] <= 0.1 else "NOT met"
        print(f"target peak memory at N = 16384 <= 0.1x dense: {verdict} ({ratios[16384][1]:.3f}x)")


if __name__ == "__main__":
    main()
