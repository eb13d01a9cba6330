"""The report of ``kadapt bench load``: per-scan records, service scrapes and CPU time -> one JSON dict.

Kept apart from the runner (:mod:`kadapt.launcher.bench_load`) so that the numbers' definitions sit in
one place: a deadline miss is a plan the scanner held later than the deadline after its last ACS shot;
fallbacks are degraded plans, grouped by the reason slug (the text before ``:``) and explained by
:data:`FALLBACK_REASONS`; errors are non-2xx answers and scanner exceptions.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadapt.launcher.bench_metrics import (
    Samples,
    counter_by,
    diff_samples,
    histogram_summary,
    parse_samples,
    percentiles,
)
from kadapt.replay.scanner import AcquiredScan, ScanOutcome

# Reason slugs of degraded plans: who decided (sampler or gateway) and why.
FALLBACK_REASONS = {
    "model-late": "sampler: too little time was left before the deadline for the model (queued behind "
    "other plans or a busy CPU), so the sampler served the policy's fallback mask itself",
    "model-error": "sampler: the model failed on this input (e.g. non-finite output); fallback mask served",
    "sampler-timeout": "gateway: no sampler answer before the deadline minus the gateway's margin (sampler "
    "overloaded or slow), the gateway served its local fallback mask",
    "sampler-unavailable": "gateway: the sampler could not be reached (down, connection refused or reset)",
    "sampler-error": "gateway: the sampler answered with an error status (e.g. unknown policy, geometry)",
    "sampler-invalid-plan": "gateway: the sampler's plan broke the contract (budget, ACS, range)",
}


@dataclass(frozen=True)
class ScanRecord:
    """One scan as the scanner saw it (``error`` True: it raised; the rest is then empty)."""

    scanner: int
    repeat: int
    volume: str
    seconds: float
    error: bool = False
    plan_ms: float | None = None
    plan_rtt_ms: float | None = None
    missed: bool = False
    degraded: bool = False
    reason: str | None = None
    served_by: str | None = None
    acquisitions: int = 0
    scan_seconds: float | None = None
    recon_seconds: float | None = None
    recon_method_used: str | None = None

    @classmethod
    def of(
        cls, scanner: int, repeat: int, volume: str, outcome: ScanOutcome, deadline_ms: float
    ) -> ScanRecord:
        return cls(
            scanner=scanner,
            repeat=repeat,
            volume=volume,
            seconds=outcome.scan_seconds + outcome.recon_seconds,
            plan_ms=outcome.plan_ms,
            plan_rtt_ms=outcome.plan_rtt_ms,
            missed=outcome.plan_ms > deadline_ms,
            degraded=outcome.plan.degraded,
            reason=outcome.plan.reason,
            served_by=outcome.plan.served_by,
            acquisitions=outcome.final.acquired_lines,
            scan_seconds=outcome.scan_seconds,
            recon_seconds=outcome.recon_seconds,
            recon_method_used=outcome.final.recon_method_used,
        )

    @classmethod
    def acquired_only(
        cls, scanner: int, repeat: int, volume: str, acquired: AcquiredScan, deadline_ms: float
    ) -> ScanRecord:
        """A scan whose plan and acquisition went through but whose images did not (an error)."""
        return cls(
            scanner=scanner,
            repeat=repeat,
            volume=volume,
            seconds=acquired.scan_seconds,
            error=True,
            plan_ms=acquired.plan_ms,
            plan_rtt_ms=acquired.plan_rtt_ms,
            missed=acquired.plan_ms > deadline_ms,
            degraded=acquired.plan.degraded,
            reason=acquired.plan.reason,
            served_by=acquired.plan.served_by,
            scan_seconds=acquired.scan_seconds,
        )

    @classmethod
    def failed(cls, scanner: int, repeat: int, volume: str, seconds: float) -> ScanRecord:
        return cls(scanner=scanner, repeat=repeat, volume=volume, seconds=seconds, error=True)


@dataclass(frozen=True)
class ServiceScrape:
    """One service's ``/metrics`` text before and after the measured phase."""

    before: str
    after: str

    def delta(self) -> Samples:
        return diff_samples(parse_samples(self.before), parse_samples(self.after))


def process_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process (Linux ``/proc/<pid>/stat``; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seconds = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    times = os.times()
    seconds["client"] = times.user + times.system
    return seconds


def cores_busy_seconds(cores: list[int] | None = None) -> float:
    """CPU seconds the given cores (default: this process's affinity) spent busy so far, from
    ``/proc/stat`` (everything but idle and iowait); 0.0 where there is no ``/proc/stat``. Busy time
    minus the run's own processes' CPU is what other work on the machine took from the same cores."""
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wanted = {f"cpu{core}" for core in cores}
    busy = 0
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in wanted:
                values = [int(value) for value in fields[1:8]]  # user nice system idle iowait irq softirq
                busy += sum(values) - values[3] - values[4]
    except OSError:
        return 0.0
    return busy / ticks


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": model,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "load_average_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fallbacks(plans: list[ScanRecord]) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for record in plans:
        if record.degraded:
            slug = (record.reason or "unknown").split(":", 1)[0].strip()
            by_reason[slug] += 1
            examples.setdefault(slug, record.reason or "")
    return {
        "total": sum(by_reason.values()),
        "by_reason": dict(sorted(by_reason.items())),
        "explained": {
            slug: {
                "count": count,
                "meaning": FALLBACK_REASONS.get(slug, "not a known reason slug"),
                "example": examples[slug],
            }
            for slug, count in sorted(by_reason.items())
        },
    }


def _services(scrapes: dict[str, ServiceScrape], deadline_s: float) -> dict[str, Any]:
    gateway = scrapes["gateway"].delta()
    sampler = scrapes["sampler"].delta()
    recon = scrapes["recon"].delta()
    # The gateway's own deadline-miss counter, where the gateway has one; else the plan histogram.
    miss_counter = counter_by(gateway, "kadapt_gateway_deadline_miss", "")
    plan_seconds = histogram_summary(gateway, "kadapt_gateway_plan_seconds", threshold=deadline_s)
    return {
        "gateway": {
            "plans_by_outcome": counter_by(gateway, "kadapt_gateway_plans", "outcome"),
            "fallback_by_reason": counter_by(gateway, "kadapt_gateway_fallback", "reason")
            or counter_by(gateway, "kadapt_gateway_degraded", "reason"),  # the counter's earlier name
            "plan_ms": plan_seconds,
            "deadline_misses": (
                {"source": "kadapt_gateway_deadline_miss_total", "count": int(sum(miss_counter.values()))}
                if any(name == "kadapt_gateway_deadline_miss_total" for name, _ in gateway)
                else {
                    "source": "kadapt_gateway_plan_seconds above the deadline [at least, at most]",
                    "count": plan_seconds["above_threshold"],
                }
            ),
            "http_requests_by_status": _histogram_counts_by(
                gateway, "kadapt_gateway_http_request_seconds", "status"
            ),
            "http_request_ms": histogram_summary(gateway, "kadapt_gateway_http_request_seconds"),
            "event_loop_lag_ms": histogram_summary(gateway, "kadapt_gateway_event_loop_lag_seconds"),
        },
        "sampler": {
            "plans_by_outcome": counter_by(sampler, "kadapt_sampler_plans", "outcome"),
            "fallback_by_reason": counter_by(sampler, "kadapt_sampler_fallback", "reason"),
            "deadline_exceeded_by_stage": counter_by(sampler, "kadapt_sampler_deadline_exceeded", "stage"),
            "plan_ms": histogram_summary(sampler, "kadapt_sampler_plan_seconds", threshold=deadline_s),
            "queue_wait_ms": histogram_summary(sampler, "kadapt_sampler_queue_wait_seconds"),
            "event_loop_lag_ms": histogram_summary(sampler, "kadapt_sampler_event_loop_lag_seconds"),
        },
        "recon": {
            "jobs_by_status": counter_by(recon, "kadapt_recon_jobs", "status"),
            "redeliveries": int(sum(counter_by(recon, "kadapt_recon_redeliveries", "").values())),
            "fallbacks": int(sum(counter_by(recon, "kadapt_recon_fallbacks", "").values())),
            "job_ms": histogram_summary(recon, "kadapt_recon_job_seconds"),
        },
    }


def _histogram_counts_by(samples: Samples, name: str, label: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for (sample, labels), value in samples.items():
        if sample == f"{name}_count" and value:
            counts[dict(labels).get(label, "")] += int(value)
    return dict(sorted(counts.items()))


def build_report(
    *,
    records: list[ScanRecord],
    settings: dict[str, Any],
    scrapes: dict[str, ServiceScrape],
    statuses: dict[str, int],
    exceptions: list[str],
    ingest_bytes: int,
    wall_s: float,
    startup_s: float,
    cpu_seconds: dict[str, float],
    volume: dict[str, Any],
    logs: dict[str, list[str]],
    load_before: list[float],
    client_loop_lag_ms: list[float],
    cores_busy_s: float,
    core_split: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The JSON-ready report (layout in ``docs/benchmarks.md``)."""
    plans = [record for record in records if record.plan_ms is not None]
    done = [record for record in plans if record.recon_seconds is not None]
    deadline_ms = float(settings["deadline_ms"])
    acquisitions = sum(record.acquisitions for record in plans)
    misses = [record for record in plans if record.missed]
    return {
        "kind": "kadapt-bench-load",
        "version": 1,
        "machine": {**_machine(), "load_average_start": load_before, "core_split": core_split},
        "settings": settings,
        "volume": volume,
        "scans_total": len(records),
        "plans_total": len(plans),
        "plans_expected": int(settings["scans"]) * int(settings["repeats"]),
        "deadline_ms": deadline_ms,
        "deadline_misses": len(misses),
        "deadline_missed_plan_ms": sorted(round(record.plan_ms or 0.0, 3) for record in misses),
        "plans_on_time": len(plans) - len(misses),
        **percentiles((record.plan_ms or 0.0 for record in plans), "plan_ms"),
        # The round trip that delivered the plan: the last ACS shot's POST with ``wait_plan`` (ingest,
        # planning, the plan inline), or ``GET .../plan`` from a gateway that answered without the plan.
        **percentiles((record.plan_rtt_ms or 0.0 for record in plans), "plan_get_ms"),
        # The rest of the scanner's wait, before that round trip: 0 when the ACS POST carried the plan.
        **percentiles(
            ((record.plan_ms or 0.0) - (record.plan_rtt_ms or 0.0) for record in plans), "last_acs_post_ms"
        ),
        "fallbacks": _fallbacks(plans),
        "served_by": dict(Counter(record.served_by or "" for record in plans)),
        "ingest": {
            "acquisitions": acquisitions,
            "bytes": ingest_bytes,
            "acq_per_s": round(acquisitions / wall_s, 1),
            "mb_per_s": round(ingest_bytes / wall_s / 1e6, 3),
            "note": "paced by tr_ms like scanners: the offered load, not the gateway's capacity",
        },
        **percentiles((record.recon_seconds or 0.0 for record in done), "recon_job_s"),
        "recon_methods_used": dict(Counter(record.recon_method_used or "" for record in done)),
        "errors": {
            "total": sum(statuses.values()) + len(exceptions),
            "non_2xx": statuses,
            "exceptions": exceptions,
        },
        "services": _services(scrapes, deadline_ms / 1000.0),
        # The scanners' event loop waking late (CPU starvation of the client) inflates every client time.
        "client_loop_lag": percentiles(client_loop_lag_ms, "ms"),
        "cpu_seconds": {name: round(value, 2) for name, value in sorted(cpu_seconds.items())},
        # Busy time of the cores this run is pinned to, and the part of it that was not this run's.
        "cores_busy_s": round(cores_busy_s, 2),
        "other_work_cpu_s": round(max(0.0, cores_busy_s - sum(cpu_seconds.values())), 2),
        "wall_s": round(wall_s, 2),
        "startup_s": round(startup_s, 2),
        "scans": [
            {key: value for key, value in vars(record).items() if value is not None} for record in records
        ],
        **({"service_log_tails": logs} if logs else {}),
    }
