"""``kadapt``: data, serve, up, replay, demo, bench, train, learn-pattern, jobs.

Every command maps bad input to a message that names the bad value and a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kadapt.cli.auth import auth_app
from kadapt.cli.bench import bench_app
from kadapt.cli.common import console, fail, progress_bar
from kadapt.cli.jobs import jobs_app
from kadapt.cli.learn import learn_app
from kadapt.cli.train import train_app
from kadapt.errors import KadaptError

if TYPE_CHECKING:
    from kadapt.data.manifest import DatasetManifest
    from kadapt.replay.run import ReplaySettings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="kadapt: adaptive MRI acquisition server.")
data_app = typer.Typer(no_args_is_help=True, help="Offline data.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
SERVICE_NAMES = ("gateway", "sampler", "recon")


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option(help="output directory")],
    n_volumes: Annotated[
        int | None, typer.Option("--n-volumes", help="volumes, at least 3 (default 16; cine 18)")
    ] = None,
    size: Annotated[int | None, typer.Option(help="matrix size H = W (default 128; cine 96)")] = None,
    coils: Annotated[int | None, typer.Option(help="receive coils (default 8)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the simulator (deterministic)")] = 0,
    force: Annotated[bool, typer.Option(help="overwrite an existing dataset in OUT")] = False,
    task_kind: Annotated[
        str | None,
        typer.Option("--task", help="task data: segmentation | classification | both (labelled brains)"),
    ] = None,
    frames: Annotated[
        int | None, typer.Option(help="cine data: cardiac frames per slice (docs/data.md, 'Cine data')")
    ] = None,
    slices: Annotated[int | None, typer.Option(help="slices per volume (default 8; cine 4)")] = None,
    num_acs: Annotated[
        int | None, typer.Option(help="ACS lines flagged in MRD files (cine 4, else max(8, size // 8))")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="cine: a tiny set for tests (3 volumes x 2 slices, 32 x 32, 2 coils)")
    ] = False,
) -> None:
    """Simulate multi-coil volumes from packaged anatomy; fastMRI HDF5 + MRD HDF5 + manifest.json.

    With --frames T: cine volumes (slices, frames, coils, H, W) with cardiac-like motion.
    """
    from kadapt.data.build import build_dataset

    if frames is None and quick:
        raise fail(ValueError("--quick builds a tiny cine set; pass --frames T with it"))
    if frames is not None and task_kind is not None:
        raise fail(ValueError("--task and --frames do not combine: task data is static"))
    started = time.perf_counter()
    try:
        with progress_bar() as progress:
            task = progress.add_task("simulating volumes", total=None)

            def advance(done: int, total: int, *_: object) -> None:
                progress.update(task, completed=done, total=total)

            manifest: DatasetManifest
            if frames is not None:
                from kadapt.data.cine_build import DEFAULT_CINE_VOLUMES, build_cine_dataset

                manifest = build_cine_dataset(
                    out,
                    frames=frames,
                    n_volumes=n_volumes if n_volumes is not None else (3 if quick else DEFAULT_CINE_VOLUMES),
                    size=size if size is not None else (32 if quick else 96),
                    coils=coils if coils is not None else (2 if quick else 8),
                    slices_per_volume=slices if slices is not None else (2 if quick else 4),
                    num_acs=4 if num_acs is None else num_acs,
                    seed=seed,
                    progress=advance,
                    overwrite=force,
                )
            else:
                manifest = build_dataset(
                    out,
                    n_volumes=n_volumes if n_volumes is not None else 16,
                    size=size if size is not None else 128,
                    coils=coils if coils is not None else 8,
                    slices_per_volume=slices if slices is not None else 8,
                    num_acs=num_acs,
                    seed=seed,
                    progress=advance,
                    overwrite=force,
                    task=task_kind,
                )
    except KadaptError as error:
        raise fail(error) from error
    console.print(
        f"wrote {len(manifest.volumes)} volumes to {out} in {time.perf_counter() - started:.1f} s "
        f"({out / 'manifest.json'})"
    )


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="gateway | sampler | recon")],
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 0,
    mrd_port: Annotated[
        int | None,
        typer.Option(help="gateway only: also serve the MRD streaming protocol on this port (9002)"),
    ] = None,
) -> None:
    """Run one service with uvicorn (settings from KADAPT_<SERVICE>_* environment variables)."""
    import os

    import uvicorn

    if service not in SERVICE_NAMES:
        raise fail(ValueError(f"unknown service {service!r}; choose one of {', '.join(SERVICE_NAMES)}"))
    if mrd_port is not None:
        if service != "gateway":
            raise fail(ValueError(f"--mrd-port {mrd_port}: only the gateway serves MRD, not {service!r}"))
        if not 0 <= mrd_port <= 65535:
            raise fail(ValueError(f"--mrd-port {mrd_port} is not a TCP port (0..65535)"))
        # The app factory reads its settings from the environment (uvicorn imports it by name).
        os.environ["KADAPT_GATEWAY_MRD_PORT"] = str(mrd_port)
        os.environ["KADAPT_GATEWAY_MRD_HOST"] = host
    default_ports = {"gateway": 8000, "sampler": 8001, "recon": 8002}
    uvicorn.run(
        f"kadapt.launcher.factories:{service}",
        factory=True,
        host=host,
        port=port or default_ports[service],
        log_level="info",
    )


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="shared data directory (blobs, scans, redis)")] = Path(
        "kadapt-data"
    ),
    gateway_port: Annotated[int, typer.Option(help="gateway port")] = 8000,
    sampler_port: Annotated[int, typer.Option(help="sampler port")] = 8001,
    recon_port: Annotated[int, typer.Option(help="recon port")] = 8002,
    redis_port: Annotated[int, typer.Option(help="redis-server port")] = 6390,
    mrd_port: Annotated[int, typer.Option(help="gateway's MRD streaming port (0: off)")] = 9002,
    models: Annotated[Path, typer.Option(help="model repository")] = Path("models"),
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="bearer tokens (client_id:scopes:sha256 lines): auth on for all services"),
    ] = None,
) -> None:
    """redis-server + sampler + recon + gateway as separate processes on loopback; Ctrl-C stops them."""
    from kadapt.launcher.processes import ProcessStack

    if not 0 <= mrd_port <= 65535:
        raise fail(ValueError(f"--mrd-port {mrd_port} is not a TCP port (0..65535, 0 turns MRD off)"))
    ports = {"gateway": gateway_port, "sampler": sampler_port, "recon": recon_port, "redis": redis_port}
    if mrd_port:
        ports["mrd"] = mrd_port
    stack = ProcessStack(
        data_dir=data_dir.resolve(),
        model_repository=models.resolve(),
        log_dir=data_dir.resolve() / "logs",
        ports=ports,
        mrd=bool(mrd_port),
        tokens_file=tokens_file.resolve() if tokens_file is not None else None,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stack.start()
    except KadaptError as error:
        stack.stop()
        raise fail(error) from error
    for name in (*SERVICE_NAMES, "redis"):
        console.print(f"{name:8s} {stack.url(name) if name != 'redis' else stack.redis_url}")
    if stack.mrd_port is not None:
        console.print(f"{'mrd':8s} tcp://{stack.host}:{stack.mrd_port} (MRD streaming, gateway)")
    auth = f"on, tokens from {tokens_file}" if stack.auth is not None else "OFF (no --tokens-file)"
    console.print(f"auth: {auth}")
    console.print(f"logs in {data_dir / 'logs'}; Ctrl-C stops everything")
    try:
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    console.print(f"[red]{name} exited with code {process.returncode}[/]")
                    stopping = True
            time.sleep(0.5)
    finally:
        stack.stop()
        console.print("stopped")


@app.command()
def replay(
    paths: Annotated[list[Path], typer.Argument(help="fastMRI or MRD HDF5 files, fully sampled")],
    out: Annotated[Path, typer.Option(help="report directory")],
    gateway: Annotated[str | None, typer.Option(help="gateway base URL, e.g. http://127.0.0.1:8000")] = None,
    embedded: Annotated[bool, typer.Option(help="run the stack in this process instead")] = False,
    policy: Annotated[list[str], typer.Option(help="sampler policy (repeatable)")] = ["vd-random"],  # noqa: B006
    recon: Annotated[list[str], typer.Option(help="reconstruction (repeatable)")] = ["cg-sense"],  # noqa: B006
    R: Annotated[list[float], typer.Option("--R", help="acceleration (repeatable)")] = [4.0],  # noqa: B006
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default: fastMRI's 0.32 W / R)")] = None,
    deadline_ms: Annotated[float, typer.Option(help="plan deadline")] = 200.0,
    fallback: Annotated[
        str | None,
        typer.Option(help="fixed policy when the sampler is late (default vd-random; cine: kt-equispaced)"),
    ] = None,
    tr_ms: Annotated[float, typer.Option(help="pace readouts by this repetition time")] = 0.0,
    models: Annotated[Path, typer.Option(help="model repository (embedded)")] = Path("models"),
    token: Annotated[
        str | None, typer.Option(envvar="KADAPT_TOKEN", help="bearer token for --gateway (env KADAPT_TOKEN)")
    ] = None,
) -> None:
    """Play fully sampled files as a scanner would; score against the reference; write report.json."""
    from kadapt.replay.run import ReplaySettings

    if (gateway is None) == (not embedded):
        raise fail(ValueError("give exactly one of --gateway URL or --embedded"))
    for path in paths:
        if not path.is_file():
            raise fail(FileNotFoundError(f"no such file: {path}"))
    settings = ReplaySettings(
        policies=policy,
        recons=recon,
        accelerations=R,
        num_acs=num_acs,
        deadline_ms=deadline_ms,
        tr_ms=tr_ms,
        fallback=fallback,
    )
    try:
        rows = asyncio.run(_replay(paths, settings, out, gateway, models, token))
    except KadaptError as error:
        raise fail(error) from error
    from kadapt.launcher.demo import print_table

    print_table(rows)
    console.print(f"report: {out / 'report.json'}")


async def _replay(
    paths: list[Path],
    settings: ReplaySettings,
    out: Path,
    gateway: str | None,
    models: Path,
    token: str | None = None,
) -> list[dict[str, object]]:
    from kadapt.replay.auth import gateway_client
    from kadapt.replay.report import aggregate
    from kadapt.replay.run import replay_files

    if gateway is not None:
        async with gateway_client(gateway, token=token, timeout_s=600.0) as client:
            results = await replay_files(client, paths, settings, out, progress=console.print)
    else:
        from kadapt.launcher.embedded import embedded_stack

        with tempfile.TemporaryDirectory(prefix="kadapt-") as tmp:
            async with embedded_stack(Path(tmp), models) as stack:
                results = await replay_files(stack.gateway, paths, settings, out, progress=console.print)
    return aggregate(results)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="report directory")] = Path("kadapt-demo"),
    data: Annotated[Path, typer.Option(help="dataset directory (built when absent)")] = Path("data/default"),
    volumes: Annotated[int, typer.Option(help="test volumes to replay")] = 2,
    models: Annotated[Path, typer.Option(help="model repository")] = Path("models"),
    mrd_port: Annotated[int, typer.Option(help="MRD streaming port while the demo runs (0: off)")] = 9002,
) -> None:
    """The embedded stack end to end: held-out volumes x fixed and learned policies x recons at R = 4, 8."""
    from kadapt.launcher.demo import run_demo

    if not 0 <= mrd_port <= 65535:
        raise fail(ValueError(f"--mrd-port {mrd_port} is not a TCP port (0..65535, 0 turns MRD off)"))
    try:
        rows = run_demo(
            out=out, data=data, volumes=volumes, models=models, console=console, mrd_port=mrd_port or None
        )
    except KadaptError as error:
        raise fail(error) from error
    console.print(f"report: {out / 'report.json'} ({len(rows)} rows), figures in {out / 'figures'}")


app.add_typer(train_app, name="train")
app.add_typer(learn_app, name="learn-pattern")
app.add_typer(auth_app, name="auth")
app.add_typer(jobs_app, name="jobs")


if __name__ == "__main__":
    app()
