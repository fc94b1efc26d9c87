"""Stop a training run at a step boundary on SIGTERM or SIGUSR1, with a checkpoint of that step.

A SLURM job asks for a warning before its time limit (``#SBATCH --signal=B:USR1@300``); SLURM and
``torchrun`` stop processes with SIGTERM. The handler installed by :class:`StopSignals` only records the
signal (the one thing a handler may safely do: Python runs it between two bytecodes of the main thread,
possibly inside a ``print`` or a lock). The trainer asks :meth:`StopSignals.agreed` after every optimizer
step; under ``torchrun`` that is one all-reduce of one integer (:func:`mvssl_core.dist.global_count`), so
every rank stops after the same step even when only some ranks received the signal. The trainer then
writes the checkpoint of that step (rank 0, the other ranks wait for it) and raises :class:`Stopped`;
the command line prints one line per rank and exits with :data:`EXIT_STOPPED` (0). ``--resume`` then
continues exactly (the run is not finished: there is no ``results.json``).

How a signal reaches the trainer: sent to ``python -m mvssl_core pretrain`` directly, or to ``torchrun``,
which passes SIGTERM (and SIGINT, SIGHUP, SIGQUIT; SIGUSR1 only when listed in ``--signals-to-handle`` /
``PET_SIGNALS_TO_HANDLE``) on to its workers and sends SIGKILL ``--shutdown-timeout`` /
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default 30) later. ``scripts/pretrain.sh`` traps SIGUSR1 and
SIGTERM, passes SIGTERM on to its launcher with a 240 s timeout, and requeues the SLURM job on SIGUSR1.
DataLoader workers ignore both signals (:func:`ignore_in_worker`): ``torchrun`` signals a worker's whole
process group, and a killed loader worker would fail the step the trainer is finishing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from mvssl_core import dist

__all__ = ["StopSignals", "Stopped", "ignore_in_worker", "STOP_SIGNALS", "EXIT_STOPPED"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that stop a run at the next step boundary."""

EXIT_STOPPED = 0
"""Exit status of ``pretrain`` stopped by a signal after writing its checkpoint (``--resume`` continues it)."""


class Stopped(Exception):
    """The run stopped by a signal after step ``step`` of ``total``; ``checkpoint`` holds that step.

    ``signal_name`` is the signal this rank received, or None when only another rank received one.
    """

    def __init__(self, step: int, total: int, checkpoint: str, signal_name: str | None, rank: int,
                 world_size: int) -> None:
        self.step, self.total, self.checkpoint = step, total, checkpoint
        self.signal_name, self.rank, self.world_size = signal_name, rank, world_size
        by = signal_name or "a signal received by another rank"
        where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
        super().__init__(f"stopped by {by} at step {step} of {total}{where}; the checkpoint {checkpoint} is at "
                         f"step {step}; resume with --resume")


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGUSR1 set a flag instead of ending the process.

    Installs the handlers only in the main thread (elsewhere Python refuses them; the flag then stays
    unset) and restores the previous handlers on exit.

    Example:
        >>> with StopSignals() as stop:
        ...     stop.agreed(torch.device("cpu"))
        False
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:  # the first signal names the stop; nothing else happens here
            self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def signal_name(self) -> str | None:
        """The name of the signal this process received (``"SIGUSR1"``), or None."""
        return self.received.name if self.received is not None else None

    def agreed(self, device: torch.device | str = "cpu") -> bool:
        """Whether any rank received a stop signal. A collective under ``torchrun``: every rank calls it at the
        same step (one all-reduce of one integer), so all ranks get the same answer."""
        return dist.global_count(int(self.received is not None), device) > 0


def ignore_in_worker() -> None:
    """Ignore the stop signals in a DataLoader worker process: the training process ends its workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
