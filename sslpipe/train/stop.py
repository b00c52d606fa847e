"""SIGTERM and Ctrl-C during training: finish the step, save a checkpoint, say how to continue.

Slurm sends SIGTERM before it kills a job (`--signal`, preemption, `scancel`), torchrun and
`accelerate launch` pass it on to every process, a person presses Ctrl-C. Either only sets a
flag here; the loop reads it in the step's one agreed reduce (`loop.train_step`), so that every
process stops after the same step and all take part in the last checkpoint. A second Ctrl-C
stops at once, without saving (SIGTERM may arrive twice, from Slurm and from the launcher: it
never does).
"""

from __future__ import annotations

import signal
import sys
import threading

from sslpipe.errors import SslpipeError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(SslpipeError):
    """Training stopped on a signal, after a checkpoint of `step` was written (`checkpoint`)."""

    def __init__(self, signum: int, step: int, checkpoint, main_process: bool):
        self.signum, self.step, self.checkpoint, self.main_process = signum, step, checkpoint, main_process
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; "
                         f"its checkpoint is {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended (130, 143)


class StopSignals:
    """While open, SIGTERM and SIGINT set `signum` instead of ending the process.

    Outside the main thread (where Python cannot take signals) it does nothing."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce  # say so on stderr (the main process; not once per process)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        if self.signum is None:
            self.signum = signum
            if not self.announce:
                return
            again = "; Ctrl-C again stops at once, without saving" if signum == signal.SIGINT else ""
            print(f"\nsslpipe: {signal.Signals(signum).name}: stopping after this step and saving a "
                  f"checkpoint{again}", file=sys.stderr, flush=True)
