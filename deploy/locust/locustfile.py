"""Locust load test of a kadapt gateway: every user is a scanner replaying synthetic scans over REST.

One task = one scan: ``POST /v1/scans`` (MRD XML header + policy), the ACS block in shots of readouts
(``application/vnd.ismrmrd.stream``), ``GET .../plan``, the planned lines paced by TR, ``POST
.../complete``, poll ``GET /v1/scans/{id}`` until ``done``, ``GET .../images``, ``DELETE``. The k-space is
random complex noise of the configured geometry (load, not image quality). Besides the HTTP rows, two
custom rows: ``PLAN wait`` (from sending the last ACS shot to holding the plan; a failure when later
than the deadline) and ``PLAN fallback:<reason>`` (degraded plans, by reason).

Usage (``pip install 'kadapt[load]'`` for locust; ``docs/benchmarks.md``)::

    KADAPT_HOST=http://127.0.0.1:8000 KADAPT_TOKEN=<scanner token> \\
        locust -f deploy/locust/locustfile.py --headless -u 16 -r 4 -t 2m

Environment: ``KADAPT_HOST`` (default ``http://127.0.0.1:8000``; ``--host`` wins), ``KADAPT_TOKEN``
(bearer token with the scanner scope; unset: no header), ``KADAPT_POLICY`` (``vd-random``; e.g.
``mnet-mb``), ``KADAPT_RECON`` (``zero-filled``), ``KADAPT_DEADLINE_MS`` (50), ``KADAPT_R`` (4),
``KADAPT_NUM_ACS`` (8), ``KADAPT_TR_MS`` (10 per readout), ``KADAPT_SHOT_LINES`` (16),
``KADAPT_WIDTH`` / ``KADAPT_HEIGHT`` / ``KADAPT_COILS`` / ``KADAPT_SLICES`` (128 / 128 / 8 / 2: the
demo bundles' geometry), ``KADAPT_IMAGES_TIMEOUT_S`` (120).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from locust import HttpUser, between, events, task

from kadapt.mrd.builders import make_acquisition_heads
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.header import make_header
from kadapt.mrd.stream import encode_acquisitions

MRD_STREAM = {"content-type": "application/vnd.ismrmrd.stream"}


class PlanDeadlineMissedError(Exception):
    """The plan reached the scanner later than the deadline (reported as a failed ``PLAN wait``)."""


@dataclass(frozen=True)
class ScanSettings:
    """One synthetic scan's geometry and policy, from the environment."""

    width: int = 128
    height: int = 128
    coils: int = 8
    slices: int = 2
    policy: str = "vd-random"
    recon: str = "zero-filled"
    deadline_ms: float = 50.0
    acceleration: float = 4.0
    num_acs: int = 8
    tr_ms: float = 10.0
    shot_lines: int = 16
    images_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScanSettings:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: Any) -> Any:
            return type(default)(env.get(f"KADAPT_{name}", default))

        return cls(
            width=get("WIDTH", cls.width),
            height=get("HEIGHT", cls.height),
            coils=get("COILS", cls.coils),
            slices=get("SLICES", cls.slices),
            policy=get("POLICY", cls.policy),
            recon=get("RECON", cls.recon),
            deadline_ms=get("DEADLINE_MS", cls.deadline_ms),
            acceleration=get("R", cls.acceleration),
            num_acs=get("NUM_ACS", cls.num_acs),
            tr_ms=get("TR_MS", cls.tr_ms),
            shot_lines=get("SHOT_LINES", cls.shot_lines),
            images_timeout_s=get("IMAGES_TIMEOUT_S", cls.images_timeout_s),
        )

    def create_body(self) -> dict[str, Any]:
        """``POST /v1/scans`` JSON: the MRD header of the geometry and the policy."""
        return {
            "header_xml": make_header(
                readout=self.height, width=self.width, slices=self.slices, coils=self.coils
            ),
            "policy": {
                "sampler": self.policy,
                "acceleration": self.acceleration,
                "num_acs": self.num_acs,
                "plan_deadline_ms": self.deadline_ms,
                "recon": self.recon,
                "outputs": ["npy"],
            },
        }

    def acs_columns(self) -> list[int]:
        start = self.width // 2 - self.num_acs // 2
        return list(range(start, start + self.num_acs))

    def shots(self, columns: list[int], rng: np.random.Generator) -> list[bytes]:
        """MRD ACQUISITION messages for ``columns`` of every slice (slice-major), ``shot_lines`` per shot;
        ACS columns carry the embedded-ACS flag as a scanner's would. Ky = column (centre W // 2)."""
        acs = set(self.acs_columns())
        cells = [(s, c) for s in range(self.slices) for c in columns]
        payloads = []
        for start in range(0, len(cells), self.shot_lines):
            shot = cells[start : start + self.shot_lines]
            heads = make_acquisition_heads(len(shot), coils=self.coils, samples=self.height)
            heads["idx"]["slice"] = [s for s, _ in shot]
            heads["idx"]["kspace_encode_step_1"] = [c for _, c in shot]
            flag = flag_mask(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
            heads["flags"] = [flag if c in acs else 0 for _, c in shot]
            shape = (len(shot), self.coils, self.height)
            data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
            payloads.append(encode_acquisitions(heads, data))
        return payloads


class ScannerUser(HttpUser):
    """A scanner: scans back to back, a short pause between them."""

    host = os.environ.get("KADAPT_HOST", "http://127.0.0.1:8000")
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.settings = ScanSettings.from_env()
        self.rng = np.random.default_rng()  # load only: the data need not be reproducible
        token = os.environ.get("KADAPT_TOKEN")
        if token:
            self.client.headers["authorization"] = f"Bearer {token}"

    def _post_lines(self, scan_id: str, payloads: list[bytes], lines_per_shot: list[int]) -> float:
        """Post each shot once acquired (``tr_ms`` per readout); returns when the last one was sent."""
        sent = time.perf_counter()
        for payload, lines in zip(payloads, lines_per_shot, strict=True):
            time.sleep(self.settings.tr_ms * lines / 1000.0)  # gevent-patched: cooperative
            sent = time.perf_counter()
            self.client.post(
                f"/v1/scans/{scan_id}/acquisitions",
                data=payload,
                headers=MRD_STREAM,
                name="/v1/scans/[id]/acquisitions",
            )
        return sent

    def _shot_sizes(self, columns: int) -> list[int]:
        total = columns * self.settings.slices
        step = self.settings.shot_lines
        return [min(step, total - start) for start in range(0, total, step)]

    @task
    def scan(self) -> None:
        settings = self.settings
        response = self.client.post("/v1/scans", json=settings.create_body(), name="/v1/scans")
        if response.status_code != 201:
            return
        scan_id = response.json()["scan_id"]
        try:
            acs = settings.acs_columns()
            last_acs = self._post_lines(scan_id, settings.shots(acs, self.rng), self._shot_sizes(len(acs)))
            response = self.client.get(f"/v1/scans/{scan_id}/plan", name="/v1/scans/[id]/plan")
            waited_ms = (time.perf_counter() - last_acs) * 1000.0
            if response.status_code != 200:
                return
            plan = response.json()
            late = waited_ms > settings.deadline_ms
            events.request.fire(
                request_type="PLAN",
                name="wait",
                response_time=waited_ms,
                response_length=0,
                exception=PlanDeadlineMissedError(f"{waited_ms:.1f} ms > {settings.deadline_ms:g} ms")
                if late
                else None,
                context={},
            )
            if plan.get("degraded"):
                reason = str(plan.get("reason") or "unknown").split(":", 1)[0]
                events.request.fire(
                    request_type="PLAN",
                    name=f"fallback:{reason}",
                    response_time=waited_ms,
                    response_length=0,
                    exception=None,
                    context={},
                )
            rest = [int(c) for c in plan["lines"] if int(c) not in set(acs)]
            self._post_lines(scan_id, settings.shots(rest, self.rng), self._shot_sizes(len(rest)))
            response = self.client.post(f"/v1/scans/{scan_id}/complete", name="/v1/scans/[id]/complete")
            if response.status_code != 200:
                return
            self._wait_for_images(scan_id)
        finally:
            self.client.delete(f"/v1/scans/{scan_id}", name="/v1/scans/[id]")

    def _wait_for_images(self, scan_id: str) -> None:
        deadline = time.monotonic() + self.settings.images_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            with self.client.get(
                f"/v1/scans/{scan_id}", name="/v1/scans/[id] (poll)", catch_response=True
            ) as response:
                state = response.json().get("state") if response.status_code == 200 else None
                if state == "failed":
                    response.failure(f"scan failed: {response.json().get('error')}")
                    return
            if state == "done":
                self.client.get(f"/v1/scans/{scan_id}/images?format=npy", name="/v1/scans/[id]/images")
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        events.request.fire(
            request_type="RECON",
            name="images",
            response_time=self.settings.images_timeout_s * 1000.0,
            response_length=0,
            exception=TimeoutError(f"no images after {self.settings.images_timeout_s:g} s"),
            context={},
        )
