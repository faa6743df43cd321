"""Bad-record accounting: every problem is counted by kind, reported, and bounded by a budget.

A story with any problem is skipped whole and counted once, under its first problem in frame
order. Past the failure budget the run stops with an error that names the first bad records,
so a broken dataset never trains silently and a few bad lines never kill a long run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

FIRST_BAD_KEPT = 20


class BadKind(StrEnum):
    BAD_JSON = "bad_json"
    MISSING_IMAGE = "missing_image"
    CORRUPT_IMAGE = "corrupt_image"
    COUNT_MISMATCH = "count_mismatch"
    EMPTY_CAPTION = "empty_caption"


class BadRecordError(ValueError):
    """One story that cannot be used, and why."""

    def __init__(self, kind: BadKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    kind: str
    detail: str


class FailureBudgetExceeded(RuntimeError):
    """More bad stories than the configured failure budget allows."""


def allowed_bad(total_stories: int, failure_budget: float) -> int:
    """How many bad stories a dataset of ``total_stories`` may hold (a fraction, rounded down)."""
    return math.floor(failure_budget * total_stories + 1e-9)


@dataclass
class BadRecordLedger:
    """Counts of good and bad stories, and the first bad records, against the failure budget."""

    total_stories: int
    failure_budget: float
    stories: int = 0
    frames: int = 0
    bad: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in BadKind})
    first_bad: list[BadRecord] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    @property
    def allowed(self) -> int:
        return allowed_bad(self.total_stories, self.failure_budget)

    @property
    def over_budget(self) -> bool:
        return self.bad_total > self.allowed

    def good(self, frames: int) -> None:
        self.stories += 1
        self.frames += frames

    def record(self, record: BadRecord) -> None:
        self.bad[record.kind] += 1
        if len(self.first_bad) < FIRST_BAD_KEPT:
            self.first_bad.append(record)

    def check(self) -> None:
        """Raise :class:`FailureBudgetExceeded` naming the first bad records when over budget."""
        if self.over_budget:
            named = "; ".join(f"{r.file}:{r.line} {r.kind} ({r.detail})" for r in self.first_bad[:5])
            raise FailureBudgetExceeded(
                f"{self.bad_total} bad stories of {self.total_stories} exceed the failure budget "
                f"{self.failure_budget:g} (at most {self.allowed} allowed); first bad records: {named}"
            )

    def summary(self) -> dict:
        """The object ``seedstory validate-data --json`` prints."""
        return {"stories": self.stories, "frames": self.frames, "bad": dict(self.bad),
                "first_bad": [asdict(r) for r in self.first_bad]}

    def metrics(self, prefix: str = "data") -> dict[str, float]:
        """Flat numeric metrics for MLflow (``mlflow.log_metrics``)."""
        out = {f"{prefix}/stories": float(self.stories), f"{prefix}/frames": float(self.frames),
               f"{prefix}/bad_total": float(self.bad_total)}
        out.update({f"{prefix}/bad_{kind}": float(count) for kind, count in self.bad.items()})
        return out

    def log_line(self) -> str:
        kinds = ", ".join(f"{kind}={count}" for kind, count in self.bad.items() if count)
        line = (f"data: {self.stories} good stories ({self.frames} frames), {self.bad_total} bad skipped"
                f"{' (' + kinds + ')' if kinds else ''}, budget {self.allowed} of {self.total_stories}")
        return line
