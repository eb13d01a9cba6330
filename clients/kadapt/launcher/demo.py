"""``kadapt demo``: held-out volumes replayed through the embedded stack with fixed and learned sampling
policies x classic and learned reconstructions at R = 4 and 8 (ACS block W // 16); a table on the
terminal, ``report.json`` and figures.

``learned`` asks the recon service for the best bundle in ``models/`` that accepts the scan; where none
does, the job runs the fallback (CG-SENSE) and the row's ``recon_methods_used`` says so."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kadapt.data.build import build_dataset
from kadapt.data.manifest import load_manifest
from kadapt.errors import InvalidInputError
from kadapt.launcher.embedded import embedded_stack
from kadapt.replay.report import aggregate
from kadapt.replay.run import ReplaySettings, replay_files

#: Fixed mask families, then the learned sampler bundles in ``models/`` (energy-density population mask,
#: LOUPE, MNet trained on mask-backward labels, the better of the two MNets; models/README.md).
DEMO_POLICIES = (
    "equispaced",
    "random",
    "vd-random",
    "gaussian-1d",
    "centre-only",
    "energy-pop",
    "loupe",
    "mnet-mb",
)
DEMO_RECONS = ("zero-filled", "sense", "cg-sense", "l1-wavelet", "learned")
DEMO_ACCELERATIONS = (4.0, 8.0)


def held_out_volumes(data: Path, count: int) -> list[Path]:
    """The first ``count`` held-out (test split) fastMRI files of the dataset at ``data``."""
    manifest = load_manifest(data / "manifest.json")
    files = [data / volume.file for volume in manifest.volumes if volume.split == "test"]
    if not files:
        raise InvalidInputError(f"{data}: the dataset has no test volumes")
    return files[:count]


def demo_num_acs(data: Path) -> int:
    """The ACS block the bundles in ``models/`` were trained with: the trainer's default ``W // 16``
    (8 lines at W = 128), at least 4. An ``mnet`` bundle refuses scans with another ACS size (the sampler
    serves its fallback), so the demo replays every policy and R with this one block."""
    widths = {volume.width for volume in load_manifest(data / "manifest.json").volumes}
    if len(widths) != 1:
        raise InvalidInputError(f"{data}: the demo needs one phase-encode width, found {sorted(widths)}")
    return max(4, widths.pop() // 16)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def print_table(rows: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(title="kadapt replay: volume-level metrics (fastMRI conventions)")
    for column in (
        "policy",
        "recon",
        "R",
        "n",
        "PSNR dB",
        "SSIM",
        "NMSE",
        "plan p50 ms",
        "plan p99 ms",
        "degraded",
    ):
        table.add_column(column, justify="left" if column in ("policy", "recon") else "right")
    for row in rows:
        table.add_row(
            row["policy"],
            row["recon"],
            f"{row['R']:g}",
            str(row["n_volumes"]),
            f"{row['psnr']:.2f}",
            f"{row['ssim']:.4f}",
            f"{row['nmse']:.4f}",
            f"{row['plan_ms_p50']:.1f}",
            f"{row['plan_ms_p99']:.1f}",
            str(row["degraded_plans"]),
        )
    # Piped output (make demo | tee, CI logs) defaults to 80 columns and would truncate the names.
    out = console or Console()
    if out.width < 130:
        out = Console(width=130, file=out.file)
    out.print(table)


def run_demo(
    *,
    out: Path,
    data: Path,
    volumes: int,
    models: Path,
    console: Console,
    policies: Sequence[str] = DEMO_POLICIES,
    recons: Sequence[str] = DEMO_RECONS,
    accelerations: Sequence[float] = DEMO_ACCELERATIONS,
    mrd_port: int | None = None,
) -> list[dict[str, Any]]:
    """Build the default dataset when absent, replay ``volumes`` test volumes, print and save the table.

    With ``mrd_port`` the embedded gateway also listens for MRD streaming clients while the demo runs; a
    port already in use is reported and the demo runs without it (the replay uses REST)."""
    if mrd_port is not None and not _port_free(mrd_port):
        console.print(f"MRD port {mrd_port} is in use: the demo runs without the MRD streaming server")
        mrd_port = None
    if not (data / "manifest.json").exists():
        console.print(f"building the default dataset in {data} ...")
        build_dataset(data)
    paths = held_out_volumes(data, volumes)
    settings = ReplaySettings(
        policies=policies, recons=recons, accelerations=accelerations, num_acs=demo_num_acs(data)
    )

    async def replay() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="kadapt-demo-") as tmp:
            async with embedded_stack(Path(tmp), models, mrd_port=mrd_port) as stack:
                if stack.mrd_port is not None:
                    console.print(f"MRD streaming server on 127.0.0.1:{stack.mrd_port} while the demo runs")
                results = await replay_files(stack.gateway, paths, settings, out, progress=console.print)
        return aggregate(results)

    rows = asyncio.run(replay())
    print_table(rows, Console())
    return rows
