"""The metrics of the steps between two log lines, averaged over steps and processes."""

from __future__ import annotations

import torch

from sslpipe.methods import StepOutput


class Window:
    """Metrics accumulated between two log lines, with no host sync per step: tensors on the loss's
    device are summed there, everything else (Python numbers, host tensors) on the host, until
    `means` reads them all at once."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Empty, as after a log line."""
        self.sums: dict[str, torch.Tensor] = {}  # on the loss's device
        # Values made on the host (shapes, constants): moving each to the device every step would
        # be a blocking copy from pageable memory, so they are summed here and sent once, in `means`.
        self.host_sums: dict[str, float] = {}
        self.device: torch.device | None = None
        self.measured, self.waited, self.elapsed, self.images = 0, 0.0, 0.0, 0

    def add(self, out: StepOutput | None, waited: float, elapsed: float, images: int) -> None:
        """One step's timing, and its metrics unless it was skipped (`out` None: a non-finite loss)."""
        if out is not None:
            self.device = out.loss.device
            for name, value in {"loss": out.loss, **out.metrics}.items():
                if isinstance(value, torch.Tensor) and value.device == self.device:
                    previous = self.sums.get(name, 0)
                    if isinstance(previous, torch.Tensor) and previous.device != self.device:
                        previous = previous.to(self.device)  # restored from a checkpoint, on the CPU
                    self.sums[name] = previous + value.detach().float()
                else:  # float() of a host tensor reads host memory: no device sync
                    self.host_sums[name] = self.host_sums.get(name, 0.0) + float(value)
            self.measured += 1
        self.waited, self.elapsed = self.waited + waited, self.elapsed + elapsed
        self.images += images

    # A checkpoint between two log lines keeps the window, so that the resumed run's next line
    # averages the same steps as the uninterrupted run's. Timing (and the images it
    # divides) is not kept: it is this process's own.

    def state_dict(self) -> dict:
        return {"sums": {name: value.cpu() for name, value in self.sums.items()},
                "host_sums": dict(self.host_sums), "measured": self.measured}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.sums = dict(state["sums"])  # on the CPU until the next `add` moves each to its device
        self.host_sums, self.measured = dict(state["host_sums"]), state["measured"]

    def means(self, accelerator) -> dict[str, float]:
        """The metrics' means over the window's measured steps and all processes (one reduce), and
        the throughput: images/s and the share of step time spent waiting for data."""
        names, host = sorted(self.sums), sorted(self.host_sums)
        means: dict[str, float] = {}
        # Every process skips the same steps and its method returns the same names, so all take
        # part in this reduce or none.
        if names or host:
            stacked = [torch.stack([self.sums[n] for n in names])] if names else []
            if host:  # host values may differ by process too: one copy per log line, not per step
                stacked.append(torch.tensor([self.host_sums[n] for n in host], device=self.device))
            reduced = accelerator.reduce(torch.cat(stacked) / self.measured, reduction="mean").tolist()
            for name, value in zip(names + host, reduced):  # a name may have come both ways
                means[name] = means.get(name, 0.0) + value
        return {**dict(sorted(means.items())), "images_per_s": self.images / self.elapsed,
                "data_wait": self.waited / self.elapsed}
