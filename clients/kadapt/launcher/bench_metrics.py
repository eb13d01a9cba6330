"""Prometheus scrapes for the benchmarks: what the services themselves counted during a run.

A benchmark scrapes every service's ``/metrics`` before and after its measured phase and reports the
difference (:func:`diff_samples`), so warm-up traffic and start-up plans are left out. Histograms are
summarised the way Prometheus' ``histogram_quantile`` does (linear interpolation inside the bucket that
holds the quantile), which is only as fine as the buckets: a p99 between the 25 ms and 50 ms buckets is
reported somewhere in between. Counts above a threshold (e.g. the plan deadline) are exact when the
threshold is a bucket bound, otherwise reported as a ``[lower, upper]`` pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# (metric sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(client: httpx.Client, url: str) -> Samples:
    """``GET {url}/metrics`` parsed; raises ``httpx.HTTPStatusError`` on a non-2xx answer."""
    response = client.get(f"{url}/metrics")
    response.raise_for_status()
    return parse_samples(response.text)


def diff_samples(before: Samples, after: Samples) -> Samples:
    """``after - before`` for counters and histogram series (``_created`` timestamps and gauges are
    taken from ``after``; callers only read counters and histograms from a difference)."""
    return {
        key: value - before.get(key, 0.0) if not key[0].endswith("_created") else value
        for key, value in after.items()
    }


def counter_by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A counter's total (``name`` with its ``_total`` suffix) grouped by one label, zero rows left out."""
    totals: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample != f"{name}_total":
            continue
        key = dict(labels).get(label, "")
        totals[key] = totals.get(key, 0.0) + value
    return {key: value for key, value in sorted(totals.items()) if value}


def _buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, count)`` of histogram ``name``, summed over its other labels."""
    merged: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample != f"{name}_bucket":
            continue
        bound = float(dict(labels)["le"])
        merged[bound] = merged.get(bound, 0.0) + value
    return sorted(merged.items())


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' estimate of quantile ``q`` from cumulative buckets (None when empty); a quantile in
    the ``+Inf`` bucket is reported as the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def count_above(buckets: list[tuple[float, float]], threshold: float) -> tuple[float, float]:
    """Observations above ``threshold`` as ``(at least, at most)``: equal when ``threshold`` is a bound."""
    if not buckets:
        return 0.0, 0.0
    total = buckets[-1][1]
    at_or_below = [count for bound, count in buckets if bound <= threshold]
    at_or_above = [count for bound, count in buckets if bound >= threshold]
    at_least = total - (at_or_above[0] if at_or_above else total)
    at_most = total - (at_or_below[-1] if at_or_below else 0.0)
    return at_least, at_most


def histogram_summary(
    samples: Samples, name: str, *, scale: float = 1000.0, threshold: float | None = None
) -> dict[str, Any]:
    """Count, mean and p50 / p99 / p999 (interpolated, times ``scale``: seconds -> ms by default) of
    histogram ``name``; with ``threshold`` (seconds) also ``above_threshold`` ``[at least, at most]``."""
    buckets = _buckets(samples, name)
    count = buckets[-1][1] if buckets else 0.0
    total = sum(value for (sample, _), value in samples.items() if sample == f"{name}_sum")

    def scaled(value: float | None) -> float | None:
        return None if value is None else round(value * scale, 3)

    summary: dict[str, Any] = {
        "count": int(count),
        "mean": scaled(total / count) if count else None,
        "p50": scaled(histogram_quantile(buckets, 0.50)),
        "p99": scaled(histogram_quantile(buckets, 0.99)),
        "p999": scaled(histogram_quantile(buckets, 0.999)),
        "buckets": [[bound if math.isfinite(bound) else "+Inf", int(n)] for bound, n in buckets],
    }
    if threshold is not None:
        at_least, at_most = count_above(buckets, threshold)
        summary["above_threshold"] = [int(at_least), int(at_most)]
    return summary


def percentiles(values: Iterable[float], prefix: str) -> dict[str, float | None]:
    """``{prefix}_p50``, ``_p99``, ``_p999``, ``_max`` of ``values`` (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return {f"{prefix}_{name}": None for name in ("p50", "p99", "p999", "max")}

    def at(q: float) -> float:  # linear interpolation, numpy's default
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        f"{prefix}_p50": round(at(0.50), 3),
        f"{prefix}_p99": round(at(0.99), 3),
        f"{prefix}_p999": round(at(0.999), 3),
        f"{prefix}_max": round(ordered[-1], 3),
    }
