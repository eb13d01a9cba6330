"""BART's ESPIRiT + L1-wavelet ``pics`` on one slice, through the ``bart`` executable (Uecker et al.).

BART is the classic reconstruction a physicist would run (issue 3's reference): ESPIRiT maps (Uecker et
al. 2014, seed 003 [46], seed 001 section 3) then ``min_x ||M F S x - y||^2 + lamda ||W x||_1`` with
random wavelet cycle spinning. kadapt talks to it through files: BART's ``.cfl`` (complex64 data,
column-major) and ``.hdr`` (``# Dimensions`` and 16 sizes) written and read here, no BART Python module.

Dimension mapping (BART: x = dim 0 readout, y = dim 1 phase encode, z = dim 2, coil = dim 3): kadapt's
k-space ``(C, H, W)`` (kx along H, ky along W) becomes BART ``(H, W, 1, C)``. Both use a centred FFT with
the centre at ``N // 2``, so the ACS block (``W // 2 - num_acs // 2``) is BART's calibration centre.

The executable is ``$KADAPT_BART`` when set (a path or a name on ``PATH``), else ``bart`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import (
    DependencyUnavailableError,
    ExternalToolError,
    GeometryMismatchError,
    InvalidInputError,
    NonFiniteDataError,
)
from kadapt.kspace.preprocess import acs_scale

BART_ENV = "KADAPT_BART"
BART_DIMS = 16
#: ESPIRiT kernel width. BART's default (6) collapses with 8 ACS lines (measured: PSNR 4-12 dB on the
#: default data); 4 with the calibration region limited to the ACS block (H x num_acs) works (R 4:
#: 32.2 dB, R 8: 27.5 dB on a test slice at lamda 1e-3).
ESPIRIT_KERNEL = 4
#: How much of BART's stderr an error carries.
STDERR_TAIL_CHARS = 800
_SHM = Path("/dev/shm")


@dataclass(frozen=True)
class BartResult:
    """One slice: magnitude ``image (H, W)`` float32 on the input's scale, and the wall seconds of the
    ``ecalib`` and ``pics`` runs (process launch and file I/O included)."""

    image: NDArray[np.float32]
    calib_s: float
    pics_s: float


def find_bart() -> str:
    """The path of the ``bart`` executable: ``$KADAPT_BART`` (a path or a name on ``PATH``) when set,
    else ``bart`` on ``PATH``. :class:`DependencyUnavailableError` naming what was looked for otherwise."""
    configured = os.environ.get(BART_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise DependencyUnavailableError(
                f"${BART_ENV}={configured!r} is not an executable (BART, https://mrirecon.github.io/bart/)"
            )
        return found
    found = shutil.which("bart")
    if found is None:
        raise DependencyUnavailableError(
            f"no 'bart' executable on PATH and ${BART_ENV} is unset: install BART (Debian package "
            "'bart', https://mrirecon.github.io/bart/) or point the variable at it"
        )
    return found


def bart_available() -> bool:
    """Whether :func:`find_bart` finds an executable."""
    try:
        find_bart()
    except DependencyUnavailableError:
        return False
    return True


def write_cfl(base: Path, array: NDArray[Any]) -> None:
    """Write ``array`` (up to 16 dims, BART's dimension order) as ``base.hdr`` + ``base.cfl`` (complex64,
    column-major: the first dimension varies fastest)."""
    if array.ndim > BART_DIMS:
        raise GeometryMismatchError(f"BART arrays have at most {BART_DIMS} dims, got shape {array.shape}")
    dims = list(array.shape) + [1] * (BART_DIMS - array.ndim)
    Path(f"{base}.hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    np.asarray(array, dtype=np.complex64).ravel(order="F").tofile(f"{base}.cfl")


def read_cfl(base: Path) -> NDArray[np.complex64]:
    """Read ``base.hdr`` + ``base.cfl`` into a complex64 array in BART's dimension order, trailing
    singleton dimensions dropped (as BART's own ``readcfl``): a written ``(3, 5, 1, 2)`` reads back as
    ``(3, 5, 1, 2)``, a written ``(3, 5, 1)`` as ``(3, 5)``."""
    lines = Path(f"{base}.hdr").read_text().splitlines()
    try:
        sizes = lines[lines.index("# Dimensions") + 1]
        dims = [int(size) for size in sizes.split()]
    except (ValueError, IndexError) as error:
        raise InvalidInputError(f"{base}.hdr has no valid '# Dimensions' line: {lines[:4]}") from error
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    data = np.fromfile(f"{base}.cfl", dtype=np.complex64)
    if data.size != int(np.prod(dims)):
        raise InvalidInputError(f"{base}.cfl holds {data.size} samples, header says {dims}")
    array: NDArray[np.complex64] = data.reshape(dims, order="F")
    return array


def _run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    except OSError as error:  # vanished or not executable between find_bart and here
        raise DependencyUnavailableError(f"cannot run {command[0]!r}: {error}") from error
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout or "").strip()[-STDERR_TAIL_CHARS:]
        raise ExternalToolError(
            f"{' '.join(command[1:3])} exited with status {completed.returncode}: {tail}",
            command=command,
            returncode=completed.returncode,
        )
    return seconds


def _scratch(workdir: Path | None) -> AbstractContextManager[str]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return nullcontext(str(workdir))
    # Files in RAM: the .cfl round trips are then a small part of BART's per-slice cost.
    return tempfile.TemporaryDirectory(prefix="kadapt-bart-", dir=_SHM if _SHM.is_dir() else None)


def bart_pics(
    kspace: NDArray[Any],
    num_acs: int,
    lamda: float,
    *,
    iterations: int = 100,
    workdir: Path | None = None,
    threads: int | None = None,
) -> BartResult:
    """ESPIRiT maps + L1-wavelet ``pics`` of one slice with BART.

    ``kspace`` ``(C, H, W)`` complex, zero where unacquired, with the ACS block in the centred ``num_acs``
    columns; returns the magnitude ``(H, W)`` float32 on the input's scale. As kadapt's iterative methods,
    the slice is divided by its ACS scale (99.5th percentile of |ACS|, seed 004 eq. B1) and the result
    multiplied back, so ``lamda`` has one meaning on every scan (BART's own data scaling then applies to
    the normalised data and ``-S`` undoes it). Commands::

        bart ecalib -m1 -k4 -r {H}:{num_acs} ksp sens
        bart pics -S -R W:3:0:{lamda} -i {iterations} ksp sens img

    ``workdir``: where the ``.cfl`` files go (reused, overwritten); default a temporary directory under
    ``/dev/shm`` when it exists. ``threads`` sets ``OMP_NUM_THREADS`` for BART (default: inherited).
    Raises :class:`DependencyUnavailableError` (no executable), :class:`ExternalToolError` (BART exited
    non-zero; its stderr tail in the message), :class:`GeometryMismatchError` / :class:`InvalidInputError`
    / :class:`NonFiniteDataError` for bad inputs.
    """
    if kspace.ndim != 3:
        raise GeometryMismatchError(f"bart_pics needs k-space (coil, H, W), got shape {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise InvalidInputError(f"bart_pics needs complex k-space, got dtype {kspace.dtype}")
    if not lamda > 0.0 or iterations < 1:
        raise InvalidInputError(f"bart_pics needs lamda > 0 and iterations >= 1, got {lamda}, {iterations}")
    if not np.isfinite(kspace).all():
        raise NonFiniteDataError(f"k-space {kspace.shape} holds NaN or Inf samples")
    executable = find_bart()
    _coils, height, width = kspace.shape
    scale = acs_scale(kspace, num_acs)
    # (C, H, W) -> BART (x = H, y = W, z = 1, coil = C).
    bart_kspace = (kspace / np.float32(scale)).astype(np.complex64).transpose(1, 2, 0)[:, :, None, :]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with _scratch(workdir) as folder:
        ksp, sens, img = (str(Path(folder) / name) for name in ("ksp", "sens", "img"))
        write_cfl(Path(ksp), bart_kspace)
        calib_s = _run(
            [executable, "ecalib", "-m1", f"-k{ESPIRIT_KERNEL}", "-r", f"{height}:{num_acs}", ksp, sens], env
        )
        pics_s = _run(
            [executable, "pics", "-S", "-R", f"W:3:0:{lamda:g}", "-i", str(iterations), ksp, sens, img], env
        )
        image = read_cfl(Path(img))
    if image.size != height * width:
        raise ExternalToolError(f"bart pics returned shape {image.shape}, expected ({height}, {width})")
    magnitude = (np.abs(image.reshape(height, width)) * np.float32(scale)).astype(np.float32)
    return BartResult(image=magnitude, calib_s=calib_s, pics_s=pics_s)
