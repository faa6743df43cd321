"""Step timing on rank 0: throughput, the share of time spent waiting for data, and an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepClock:
    """Splits wall time into waiting for the next batch and computing on it."""

    total_steps: int
    start_step: int = 0
    started: float = field(default_factory=time.perf_counter)
    _mark: float = field(default_factory=time.perf_counter)
    _wait: float = 0.0
    _busy: float = 0.0
    _samples: int = 0

    def batch_arrived(self) -> None:
        now = time.perf_counter()
        self._wait += now - self._mark
        self._mark = now

    def batch_done(self, samples: int) -> None:
        now = time.perf_counter()
        self._busy += now - self._mark
        self._mark = now
        self._samples += samples

    def interval(self) -> dict[str, float]:
        """Metrics since the last call: samples/s and data-wait fraction; then starts a new interval."""
        elapsed = self._wait + self._busy
        out = {
            "samples_per_s": self._samples / elapsed if elapsed > 0 else 0.0,
            "data_wait_fraction": self._wait / elapsed if elapsed > 0 else 0.0,
        }
        self._wait = self._busy = 0.0
        self._samples = 0
        return out

    def line(self, step: int, loss: float, metrics: dict[str, float]) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        return (f"step {step}/{self.total_steps} | loss {loss:.4f} | {metrics['samples_per_s']:.1f} samples/s | "
                f"data wait {metrics['data_wait_fraction']:.0%} | ETA {eta_text}")
