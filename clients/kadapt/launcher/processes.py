"""The deployment topology as local processes: redis-server + sampler + recon + gateway on loopback.

Used by ``kadapt up``, ``kadapt bench ingest`` and the integration tests, so that what is tested is what
runs: real uvicorn processes talking HTTP and Redis Streams, sharing one data directory (the "shared
volume" of a docker-compose deployment).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kadapt.errors import ServiceUnavailableError
from kadapt.launcher.tokens import StackTokens, write_stack_tokens

SERVICES = ("sampler", "recon", "gateway")


def free_port() -> int:
    """A free TCP port on 127.0.0.1, chosen by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ServiceUnavailableError(f"{what} not ready after {timeout_s:.0f} s")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ProcessStack:
    """Starts and stops the stack. ``services`` chooses which uvicorn services run (all by default);
    ``redis`` False runs the gateway and recon with in-memory stores (only useful for the gateway alone);
    ``mrd`` True has the gateway serve the MRD streaming protocol on ``ports["mrd"]`` (a free port unless
    given; ``KADAPT_GATEWAY_MRD_PORT``). ``tokens`` True (or a ``tokens_file``) turns bearer-token auth on
    for all three services: ``auth`` then holds the tokens file, the gateway's sampler token and, without
    a ``tokens_file``, one minted token per scope (``stack.auth.headers("scanner")``); default off.
    """

    data_dir: Path
    services: tuple[str, ...] = SERVICES
    redis: bool = True
    mrd: bool = False
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    model_repository: Path = Path("models")
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replicas: dict[str, str] = field(default_factory=dict)  # replica name -> its service (start_replica)
    tokens: bool = False
    tokens_file: Path | None = None
    auth: StackTokens | None = None

    def url(self, service: str) -> str:
        return f"http://{self.host}:{self.ports[service]}"

    @property
    def mrd_port(self) -> int | None:
        """The gateway's MRD streaming port, None when the MRD server is off."""
        return self.ports.get("mrd") if self.mrd else None

    @property
    def redis_url(self) -> str | None:
        return f"redis://{self.host}:{self.ports['redis']}/0" if self.redis else None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        blobs = str(self.data_dir)
        env.update(
            {
                "KADAPT_SAMPLER_MODEL_REPOSITORY": str(self.model_repository),
                "KADAPT_RECON_BLOB_DIR": str(self.data_dir / "blobs"),
                "KADAPT_RECON_MODEL_REPOSITORY": str(self.model_repository),
                "KADAPT_GATEWAY_DATA_DIR": blobs,
                # Fixed-mask bundles a scan may name as its fallback: the sampler's repository.
                "KADAPT_GATEWAY_MODEL_REPOSITORY": str(self.model_repository),
                "KADAPT_GATEWAY_SAMPLER_URL": self.url("sampler") if "sampler" in self.ports else "",
            }
        )
        if self.redis_url is not None:
            env["KADAPT_RECON_REDIS_URL"] = self.redis_url
            env["KADAPT_GATEWAY_REDIS_URL"] = self.redis_url
        if self.mrd_port is not None:
            env["KADAPT_GATEWAY_MRD_PORT"] = str(self.mrd_port)
            env["KADAPT_GATEWAY_MRD_HOST"] = self.host
        if self.auth is not None:
            env.update(self.auth.environment())
        env.update(self.extra_env)
        return env

    def _popen(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``command`` with its output appended to ``log_dir/<name>.log`` (or discarded)."""
        if self.log_dir is None:
            self.processes[name] = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if (self.tokens or self.tokens_file is not None) and self.auth is None:
            self.auth = write_stack_tokens(self.data_dir / "auth", self.tokens_file)
        for name in ("redis", *self.services, *(("mrd",) if self.mrd else ())):
            self.ports.setdefault(name, free_port())
        if self.redis:
            self.start_redis()
        for name in self.services:
            self._spawn(name)
        for name in self.services:
            self._wait_ready(name, timeout_s)

    def _spawn(self, name: str) -> None:
        service = self.replicas.get(name, name)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"kadapt.launcher.factories:{service}",
            "--host",
            self.host,
            "--port",
            str(self.ports[name]),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        self._popen(name, command, self.environment())

    def start_replica(self, service: str, name: str, timeout_s: float = 60.0) -> None:
        """Start another process of ``service`` (e.g. a second recon worker) as ``name`` on its own port;
        it shares the environment, and :meth:`start_service` / :meth:`kill_service` / :meth:`stop` know it."""
        if service not in SERVICES or name in (*SERVICES, "redis", "mrd"):
            raise ServiceUnavailableError(f"cannot start {name!r} as a replica of {service!r}")
        self.replicas[name] = service
        self.ports.setdefault(name, free_port())
        self.start_service(name, timeout_s)

    def start_service(self, name: str, timeout_s: float = 60.0) -> None:
        """(Re)start one service, replica (or ``redis``) after a stop or kill, on the same port."""
        if name == "redis":
            self.start_redis()
            return
        self._spawn(name)
        self._wait_ready(name, timeout_s)

    def start_redis(self) -> None:
        if shutil.which("redis-server") is None:
            raise ServiceUnavailableError("redis-server is not installed (make setup installs it as root)")
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self._popen(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.ports["redis"]),
                "--bind",
                self.host,
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
        )
        _wait_until(lambda: _port_open(self.ports["redis"]), 15.0, "redis-server")

    def _wait_ready(self, name: str, timeout_s: float) -> None:
        process = self.processes[name]

        def check() -> bool:
            if process.poll() is not None:
                raise ServiceUnavailableError(f"{name} exited with code {process.returncode} during start-up")
            return _ready(self.url(name))

        _wait_until(check, timeout_s, name)

    def stop_service(self, name: str, timeout_s: float = 15.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill_service(self, name: str) -> None:
        """SIGKILL, as a crash would (for failure tests)."""
        process = self.processes.pop(name, None)
        if process is not None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        for name in (*reversed(self.replicas), *reversed(("redis", *self.services))):
            self.stop_service(name)

    def __enter__(self) -> ProcessStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
