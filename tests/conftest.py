"""Test-session settings.

The suite runs on 2-core machines and starts several processes at once (gloo pairs, torchrun,
notebook kernels). Each torch process defaulting to one thread per core oversubscribes the cores,
and OpenMP's spin-waiting then slows small-tensor code by one to two orders of magnitude. One
intra-op thread per process, here and in every subprocess the tests start, keeps the suite fast and
its timings stable; it changes no value the tests check.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
