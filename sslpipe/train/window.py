"""The metrics of the steps between two log lines, averaged over steps and processes."""

from __future__ import annotations

import torch

from sslpipe.methods import StepOutput


class Window:
    """Metrics accumulated between two log lines. They stay on the device until `means`: no host
    sync per step for logging."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.measured, self.waited, self.elapsed, self.images = 0, 0.0, 0.0, 0

    def add(self, out: StepOutput | None, waited: float, elapsed: float, images: int) -> None:
        """One step's timing, and its metrics unless it was skipped (`out` None: a non-finite loss)."""
        if out is not None:
            for name, value in {"loss": out.loss, **out.metrics}.items():
                self.sums[name] = self.sums.get(name, 0) + value.detach().float().to(out.loss.device)
            self.measured += 1
        self.waited, self.elapsed = self.waited + waited, self.elapsed + elapsed
        self.images += images

    def means(self, accelerator) -> dict[str, float]:
        """The metrics' means over the window's measured steps and all processes (one reduce), and
        the throughput: images/s and the share of step time spent waiting for data."""
        names, values = sorted(self.sums), []
        if names:  # every process skips the same steps, so all take part in this reduce or none
            stacked = torch.stack([self.sums[n] for n in names]) / self.measured
            values = accelerator.reduce(stacked, reduction="mean").tolist()
        return {**dict(zip(names, values)), "images_per_s": self.images / self.elapsed,
                "data_wait": self.waited / self.elapsed}
