"""The ``kadapt`` command: messages that name the bad value, and ``kadapt up`` starting and stopping the
real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.launcher.processes import free_port

runner = CliRunner()


def test_serve_names_an_unknown_service() -> None:
    result = runner.invoke(app, ["serve", "scheduler"])
    assert result.exit_code == 2
    assert "scheduler" in result.output


def test_only_the_gateway_takes_an_mrd_port() -> None:
    result = runner.invoke(app, ["serve", "sampler", "--mrd-port", "9002"])
    assert result.exit_code == 2
    assert "only the gateway serves MRD" in result.output
    result = runner.invoke(app, ["up", "--mrd-port", "70000"])
    assert result.exit_code == 2
    assert "--mrd-port 70000" in result.output


def test_replay_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    result = runner.invoke(app, ["replay", str(missing), "--embedded", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nope.h5" in result.output


def test_replay_needs_exactly_one_target(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--gateway" in result.output


@pytest.mark.integration
def test_up_starts_redis_and_three_services_and_stops_them_on_sigint(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it as root)")
    ports = {name: free_port() for name in ("gateway", "sampler", "recon", "redis")}
    command = [sys.executable, "-m", "kadapt.cli.main", "up", "--data-dir", str(tmp_path / "data")]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    mrd_port = free_port()
    command += ["--mrd-port", str(mrd_port)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 90
        ready: set[str] = set()
        while ready != {"gateway", "sampler", "recon"} and time.monotonic() < deadline:
            for name in ("gateway", "sampler", "recon"):
                try:
                    if httpx.get(f"http://127.0.0.1:{ports[name]}/readyz", timeout=1).status_code == 200:
                        ready.add(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert ready == {"gateway", "sampler", "recon"}
        # The gateway serves MRD streams too: a CLOSE-only session gets a CLOSE (id 4) back.
        with socket.create_connection(("127.0.0.1", mrd_port), timeout=10) as mrd:
            mrd.sendall(b"\x01\x00" + b"kadapt".ljust(1024, b"\0") + b"\x04\x00")
            assert mrd.recv(2) == b"\x04\x00"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert b"stopped" in output
    assert f"tcp://127.0.0.1:{mrd_port}".encode() in output
    for port in ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
