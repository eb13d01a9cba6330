"""``deploy/locust/locustfile.py``: its synthetic scan is what the gateway accepts.

The file is imported with a stand-in ``locust`` module (the real one monkey-patches the importing
process with gevent), so the settings, the create body and the MRD shots are checked without a load
generator. Where locust is installed (the optional extra ``kadapt[load]``) the file also runs headless
for 5 s against the real process stack.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kadapt.launcher.processes import ProcessStack
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.header import parse_header
from kadapt.mrd.stream import decode_acquisitions
from kadapt.schemas import ScanCreate

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "deploy" / "locust" / "locustfile.py"


def _stand_in_locust() -> types.ModuleType:
    module = types.ModuleType("locust")

    class HttpUser:  # the attributes the locustfile touches at import time
        host: str | None = None

    def task(function: Any) -> Any:
        return function

    def between(low: float, high: float) -> Any:
        return lambda _user: (low + high) / 2

    module.HttpUser = HttpUser  # type: ignore[attr-defined]
    module.task = task  # type: ignore[attr-defined]
    module.between = between  # type: ignore[attr-defined]
    module.events = types.SimpleNamespace(request=types.SimpleNamespace(fire=lambda **_: None))  # type: ignore[attr-defined]
    return module


@pytest.fixture
def locustfile(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    # Always the stand-in: importing the real locust would monkey-patch this process with gevent.
    monkeypatch.setitem(sys.modules, "locust", _stand_in_locust())
    spec = importlib.util.spec_from_file_location("kadapt_locustfile", LOCUSTFILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_locustfile_defines_a_scanner_user_with_settings_from_the_environment(
    locustfile: types.ModuleType,
) -> None:
    assert issubclass(locustfile.ScannerUser, sys.modules["locust"].HttpUser)
    settings = locustfile.ScanSettings.from_env({"KADAPT_POLICY": "mnet-mb", "KADAPT_SLICES": "3"})
    assert (settings.policy, settings.slices, settings.deadline_ms) == ("mnet-mb", 3, 50.0)
    body = ScanCreate.model_validate(settings.create_body())  # the gateway's own schema
    assert body.policy.sampler == "mnet-mb"
    assert body.policy.plan_deadline_ms == 50.0
    info = parse_header(body.header_xml)
    assert (info.width, info.slices) == (settings.width, 3)


def test_locustfile_shots_are_mrd_acquisitions_with_the_acs_flag(locustfile: types.ModuleType) -> None:
    settings = locustfile.ScanSettings.from_env({"KADAPT_SLICES": "2", "KADAPT_SHOT_LINES": "5"})
    acs = settings.acs_columns()
    shots = settings.shots(acs, np.random.default_rng(0))
    assert len(shots) == -(-2 * len(acs) // 5)  # 16 readouts in shots of 5
    batches = [decode_acquisitions(shot) for shot in shots]
    heads = np.concatenate([batch.heads for batch in batches])
    assert sorted(set(heads["idx"]["kspace_encode_step_1"].tolist())) == acs
    assert sorted(set(heads["idx"]["slice"].tolist())) == [0, 1]
    acs_flag = np.uint64(flag_mask(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING))
    assert np.all(heads["flags"] & acs_flag)
    assert batches[0].data.shape[1:] == (settings.coils, settings.height)
    plain = decode_acquisitions(settings.shots([0], np.random.default_rng(0))[0]).heads
    assert not np.any(plain["flags"] & acs_flag)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_locustfile_runs_headless_against_the_process_stack(tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (pip install 'kadapt[load]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it as root)")
    stack = ProcessStack(
        data_dir=tmp_path / "stack",
        log_dir=tmp_path / "logs",
        model_repository=REPO / "models",
        extra_env={"KADAPT_RECON_BUNDLES": json.dumps(["modl"])},
    )
    with stack:
        env = {
            **os.environ,
            "KADAPT_HOST": stack.url("gateway"),
            "KADAPT_POLICY": "vd-random",
            "KADAPT_DEADLINE_MS": "1000",  # a busy test machine must not turn into failures here
        }
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2",
             "-t", "5s", "--only-summary"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]  # locust exits 1 on any failed request or plan
    assert "/v1/scans/[id]/plan" in output, output[-3000:]
    assert "PLAN" in output, output[-3000:]
