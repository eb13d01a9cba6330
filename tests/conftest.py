"""Shared fixtures. Integration fixtures start real processes on loopback and stop them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from kadapt.kspace.fft import fft2c, ifft2c


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class RedisServer:
    """A real redis-server on a loopback port with its own directory (AOF on, RDB off)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test; skips (with the reason) where redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it as root)")
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


# Classic-recon phantom fixtures (used by tests/shared/classic and tests/services/recon): sigpy's
# Shepp-Logan times birdcage coil maps through kadapt's centred FFT; reference = RSS (fastMRI's convention).
SIZE = 64
COILS = 4


@dataclass(frozen=True)
class Phantom:
    kspace: NDArray[np.complex64]  # (slice, frame, coil, H, W), fully sampled
    reference: NDArray[np.float32]  # (slice, frame, H, W) RSS


def make_phantom(slices: int = 1, frames: int = 1, size: int = SIZE, coils: int = COILS) -> Phantom:
    import sigpy
    import sigpy.mri

    image = sigpy.shepp_logan((size, size)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    volume = np.empty((slices, frames, coils, size, size), dtype=np.complex64)
    for s in range(slices):
        for f in range(frames):
            # Frames move the object by a pixel each; slices differ in scale by 1000x (scale-free recon).
            moved = np.roll(image, f, axis=-1) * np.float32(1000.0**s)
            volume[s, f] = fft2c(maps * moved)
    reference = np.sqrt((np.abs(ifft2c(volume)) ** 2).sum(axis=2)).astype(np.float32)
    return Phantom(volume, reference)


def variable_density_mask(
    width: int, acceleration: float, num_acs: int, rng: np.random.Generator, leading: tuple[int, ...] = ()
) -> NDArray[np.bool_]:
    """ACS + lines drawn without replacement with density ~ (1 - |ky|/max)^2 + 0.05; exactly
    ``round(width / acceleration)`` lines per ``(slice, frame)``: shape ``leading + (width,)``."""
    budget = round(width / acceleration)
    start = width // 2 - num_acs // 2
    out = np.zeros((*leading, width), dtype=bool)
    for index in np.ndindex(*leading):
        line_mask = np.zeros(width, dtype=bool)
        line_mask[start : start + num_acs] = True
        free = np.flatnonzero(~line_mask)
        distance = np.abs(free - width // 2)
        density = (1.0 - distance / distance.max()) ** 2 + 0.05
        line_mask[rng.choice(free, budget - num_acs, replace=False, p=density / density.sum())] = True
        out[index] = line_mask
    return out


def psnr(reference: NDArray[np.floating], estimate: NDArray[np.floating]) -> float:
    """fastMRI's PSNR: data range = the reference volume's max."""
    mse = float(np.mean((reference.astype(np.float64) - estimate) ** 2))
    return float(10 * np.log10(float(reference.max()) ** 2 / max(mse, 1e-30)))


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture
def phantom_factory() -> Callable[..., Phantom]:
    return make_phantom


@pytest.fixture
def vd_mask() -> Callable[..., NDArray[np.bool_]]:
    return variable_density_mask


@pytest.fixture
def psnr_of() -> Callable[[NDArray[np.floating], NDArray[np.floating]], float]:
    return psnr


TinyMNetExporter = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_mnet_repository(tmp_path_factory: pytest.TempPathFactory) -> TinyMNetExporter:
    """``make(name, seed, fallback=None) -> repository``: a fresh model repository holding one untrained
    ``mnet`` bundle (W 64, H 16, 2 coils, 8 ACS lines, R 4; random weights from ``seed``)."""
    import torch

    from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
    from kadapt.nn.mnet_bundle import export_mnet_bundle

    def make(name: str, seed: int, fallback: str | None = None) -> Path:
        repo = tmp_path_factory.mktemp("models")
        geometry = MNetGeometry(width=64, height=16, coils=2, num_acs=8)
        model = randomise_parameters(
            MNet(geometry, channels=(8, 8), hidden=16), torch.Generator().manual_seed(seed)
        )
        training = {"description": "UNTRAINED random weights (test)"}
        if fallback is not None:
            training["fallback"] = fallback
        export_mnet_bundle(
            model, repo, name=name, accelerations=(4.0,), training=training, code_version="test"
        )
        return repo

    return make
