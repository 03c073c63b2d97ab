"""What users saw during a run with an event in it (a replica killed or added), from samples.

Pure functions over the Python driver's samples, so the analysis is tested
without a stack. Segments of a run:

* *before*: from one second in (connections are warm) until the event starts;
* *after*: from the event's end until the run ends;
* *settled*: the last part of *after*, from one second past the event's end,
  which is where "users lost" is judged (a user with a success *before* and
  none *settled* lost its session, or cannot reach it any more).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import percentile

__all__ = ["Sample", "analyse", "buckets", "percentiles"]

WARM_UP_SECONDS = 1.0
SETTLE_SECONDS = 1.0
BUCKET_SECONDS = 0.5


@dataclass(frozen=True)
class Sample:
    """One request of one user, as the driver saw it (times in seconds from the run's start)."""

    user: int
    sent: float
    latency: float
    method: str
    status: int | None
    served_by: str | None
    ok: bool
    lag: float = 0.0  # how late the driver sent it compared with its schedule

    @property
    def failed(self) -> bool:
        """A server error or no answer (not merely "who are you?")."""
        return self.status is None or self.status >= 500


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p90 and p99 in milliseconds (NaN without samples)."""
    return {f"p{q}_ms": percentile(latencies, q / 100) * 1000 for q in (50, 90, 99)}


def _segment(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    return [sample for sample in samples if start <= sample.sent < end]


def _describe(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    total = len(samples)
    ok = sum(1 for sample in samples if sample.ok)
    served = Counter(sample.served_by for sample in samples if sample.served_by)
    answered = sum(served.values()) or 1
    return {
        "requests": total,
        "ok": ok,
        "success_rate": ok / total if total else float("nan"),
        "failed": sum(1 for sample in samples if sample.failed),
        "not_ok": total - ok,
        "rate": total / seconds if seconds > 0 else float("nan"),
        "ok_rate": ok / seconds if seconds > 0 else float("nan"),
        "share": {replica: count / answered for replica, count in sorted(served.items())},
        "statuses": dict(sorted(Counter(str(sample.status) for sample in samples).items())),
        "not_ok_by_method": dict(
            sorted(Counter(sample.method for sample in samples if not sample.ok).items())
        ),
        **percentiles([sample.latency for sample in samples]),
    }


def buckets(
    samples: Sequence[Sample], duration: float, width: float = BUCKET_SECONDS
) -> list[dict[str, Any]]:
    """Per time slice: requests, successes, failures and answers by replica."""
    count = max(1, int(duration / width + 0.999))
    slices: list[dict[str, Any]] = [
        {"t": index * width, "requests": 0, "ok": 0, "failed": 0, "served_by": Counter()}
        for index in range(count)
    ]
    for sample in samples:
        index = min(count - 1, max(0, int(sample.sent / width)))
        entry = slices[index]
        entry["requests"] += 1
        entry["ok"] += int(sample.ok)
        entry["failed"] += int(sample.failed)
        if sample.served_by:
            entry["served_by"][sample.served_by] += 1
    for entry in slices:
        entry["served_by"] = dict(sorted(entry["served_by"].items()))
    return slices


def analyse(
    samples: Sequence[Sample],
    *,
    duration: float,
    event_start: float,
    event_end: float,
    users: int,
    replica: str | None = None,
    fair_share: float | None = None,
) -> dict[str, Any]:
    """The figures of one run; ``replica`` is the one killed or added.

    For a replica added (``fair_share`` given, e.g. 1/4), ``rebalance_s`` is the
    time from the end of the scale-out until a time slice first gives the new
    replica at least half its fair share (``None``: it never did, as with
    route cookies, where existing users keep their replica).
    """
    before = _segment(samples, WARM_UP_SECONDS, event_start)
    after = _segment(samples, event_end, duration + 1e9)
    settled = _segment(samples, event_end + SETTLE_SECONDS, duration + 1e9)
    during = _segment(samples, event_start, event_end)
    ok_before = {sample.user for sample in before if sample.ok}
    ok_settled = {sample.user for sample in settled if sample.ok}
    lost = sorted(ok_before - ok_settled)
    failures_after_event = [s.sent for s in samples if s.failed and s.sent >= event_start]
    result: dict[str, Any] = {
        "duration": duration,
        "event_start": event_start,
        "event_end": event_end,
        "replica": replica,
        "users": users,
        "requests": len(samples),
        "failed": sum(1 for sample in samples if sample.failed),
        "before": _describe(before, event_start - WARM_UP_SECONDS),
        "during": _describe(during, max(event_end - event_start, 1e-9)),
        "after": _describe(after, duration - event_end),
        "settled": _describe(settled, duration - event_end - SETTLE_SECONDS),
        "users_lost": len(lost),
        "lost": lost,
        "last_failure_after_event_s": (
            max(failures_after_event) - event_start if failures_after_event else None
        ),
        "driver_lag_p99_ms": percentiles([sample.lag for sample in samples])["p99_ms"],
        "driver_lag_median_ms": (
            statistics.median(sample.lag for sample in samples) * 1000 if samples else 0.0
        ),
        "timeline": buckets(samples, duration),
    }
    if fair_share is not None and replica is not None:
        result["rebalance_s"] = None
        for entry in result["timeline"]:
            if entry["t"] < event_end:
                continue
            answered = sum(entry["served_by"].values())
            if answered and entry["served_by"].get(replica, 0) / answered >= fair_share / 2:
                result["rebalance_s"] = max(0.0, entry["t"] - event_end)
                break
    return result
