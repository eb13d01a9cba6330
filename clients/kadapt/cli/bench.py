"""``kadapt bench``: benchmarks with machine-readable (JSON) results; the work lives in the launcher and
the trainer, imported lazily so that ``kadapt --help`` stays fast."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kadapt.cli.common import console, fail, progress_bar
from kadapt.errors import KadaptError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks with machine-readable (JSON) results.")


def _write_json(out: Path, result: dict[str, Any], *, echo: bool = False, allow_nan: bool = True) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, allow_nan=allow_nan) + "\n"
    out.write_text(text)
    if echo:
        sys.stdout.write(text)


def _split_extra(args: list[str]) -> tuple[list[float], list[Path]]:
    """Click leaves the values after the first of a multi-value option (``--R 4 8 --bundles a b``) as extra
    arguments: numbers are accelerations, anything else a bundle path."""
    rates: list[float] = []
    refs: list[Path] = []
    for value in args:
        try:
            rates.append(float(value))
        except ValueError:
            refs.append(Path(value))
    return rates, refs


def _run_scored_bench(
    name: str,
    run: Callable[[Callable[[str], None]], dict[str, Any]],
    table: Callable[[dict[str, Any]], Any],
    out: Path,
) -> None:
    """Run a bench with a progress line, write its JSON (no NaN) and print its table: the recon and
    sampling benches, whose results hold ``rows`` and ``skipped``."""
    from rich.console import Console as RichConsole

    try:
        with progress_bar() as progress:
            task = progress.add_task(name, total=None)
            result = run(lambda what: progress.update(task, advance=1, description=what))
    except KadaptError as error:
        raise fail(error) from error
    _write_json(out, result, allow_nan=False)
    RichConsole(width=180).print(table(result))
    console.print(f"wrote {out} ({len(result['rows'])} rows, {len(result['skipped'])} skipped)")


@bench_app.command("ingest")
def bench_ingest(
    out: Annotated[Path, typer.Option(help="JSON result file")],
    quick: Annotated[bool, typer.Option(help="CI-sized run")] = False,
) -> None:
    """Ingest throughput, single-acquisition latency and plan round trip through real uvicorn processes."""
    from kadapt.launcher.bench import run_ingest_benchmark

    try:
        result = run_ingest_benchmark(quick=quick, console=console)
    except KadaptError as error:
        raise fail(error) from error
    _write_json(out, result, echo=True)


@bench_app.command("plan-latency")
def bench_plan_latency(
    out: Annotated[Path, typer.Option(help="JSON result file")],
    quick: Annotated[bool, typer.Option(help="CI-sized: 300 plans per geometry, 5 faithful runs")] = False,
    threads: Annotated[int, typer.Option(min=1, help="ORT intra-op threads (sampler and faithful)")] = 1,
) -> None:
    """Served MNet plan latency (real sampler process, HTTP) at W=128 and W=320, and the faithful MNet's."""
    from kadapt.launcher.bench_plan import run_plan_latency_benchmark

    try:
        result = run_plan_latency_benchmark(quick=quick, console=console, threads=threads)
    except KadaptError as error:
        raise fail(error) from error
    _write_json(out, result, echo=True)


@bench_app.command("load")
def bench_load(
    out: Annotated[Path, typer.Option(help="JSON result file")],
    scans: Annotated[int, typer.Option(min=1, help="concurrent scanners")] = 16,
    repeats: Annotated[int | None, typer.Option(min=1, help="scans per scanner (default 4; quick 2)")] = None,
    deadline_ms: Annotated[float, typer.Option(help="plan deadline of every scan")] = 50.0,
    policy: Annotated[str, typer.Option(help="sampler policy (bundle or mask family)")] = "mnet-mb",
    recon: Annotated[str, typer.Option(help="reconstruction (bundle or classic method)")] = "modl",
    R: Annotated[float, typer.Option("--R", help="acceleration")] = 4.0,
    num_acs: Annotated[int, typer.Option(help="ACS lines")] = 8,
    tr_ms: Annotated[float, typer.Option(help="repetition time: one readout per TR")] = 10.0,
    shot_lines: Annotated[int, typer.Option(min=1, help="readouts per ingest request")] = 16,
    slices: Annotated[int | None, typer.Option(min=1, help="first N slices of each volume (quick 2)")] = None,
    stagger_ms: Annotated[float, typer.Option(help="start of scanner i at i x this")] = 150.0,
    recon_workers: Annotated[int, typer.Option(min=1, help="recon consumers")] = 1,
    data: Annotated[Path, typer.Option(help="dataset; its test/ volumes are replayed")] = Path(
        "data/default"
    ),
    models: Annotated[Path, typer.Option(help="model repository")] = Path("models"),
    quick: Annotated[bool, typer.Option(help="16 scanners x 2 scans of 2-slice volumes")] = False,
    split_cores: Annotated[
        bool, typer.Option(help="scanners on the last core, gateway / sampler / Redis on the others")
    ] = True,
) -> None:
    """Concurrent TR-paced scans through real processes with recon jobs in flight: plan latency, deadline
    misses, fallbacks by reason, ingest rate, recon job latency, errors."""
    from kadapt.launcher.bench_load import LoadSettings, run_load_benchmark

    values: dict[str, Any] = {
        "scans": scans,
        "repeats": repeats,
        "deadline_ms": deadline_ms,
        "policy": policy,
        "recon": recon,
        "acceleration": R,
        "num_acs": num_acs,
        "tr_ms": tr_ms,
        "shot_lines": shot_lines,
        "slices": slices,
        "stagger_ms": stagger_ms,
        "recon_workers": recon_workers,
        "data": data,
        "models": models,
        "split_cores": split_cores,
    }
    try:
        if quick:
            settings = LoadSettings.quick_run(**values)
        else:
            settings = LoadSettings(**{key: value for key, value in values.items() if value is not None})
        result = run_load_benchmark(settings, progress=console.print)
    except KadaptError as error:
        raise fail(error) from error
    _write_json(out, result)
    summary = {key: result[key] for key in ("plans_total", "deadline_misses", "plan_ms_p50", "plan_ms_p99")}
    console.print(
        f"{summary} fallbacks {result['fallbacks']['by_reason']} errors {result['errors']['total']} "
        f"wall {result['wall_s']} s -> {out}"
    )


@bench_app.command("recon", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench_recon_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="dataset (kadapt data build); its test split is scored")],
    out: Annotated[Path, typer.Option(help="JSON result file")],
    bundles: Annotated[
        list[Path] | None, typer.Option(help="learned bundles REPOSITORY/NAME/VERSION, e.g. --bundles a b")
    ] = None,
    accelerations: Annotated[
        list[float] | None, typer.Option("--R", help="accelerations, e.g. --R 4 8 (default 4 8; quick 4)")
    ] = None,
    masks: Annotated[str, typer.Option(help="comma-separated 1D mask families")] = "equispaced,vd-random",
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default W // 16, the trainer's)")] = None,
    quick: Annotated[bool, typer.Option(help="CI-sized: 1 volume, 2 slices, R 4, 2 BART lamdas")] = False,
    threads: Annotated[int | None, typer.Option(help="threads for every method (default: all cores)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the masks")] = 0,
) -> None:
    """Zero-filled, SENSE, CG-SENSE, L1-wavelet, BART pics and learned bundles on the held-out test split."""

    from kadapt.trainer.bench_recon import BenchSettings, run_recon_benchmark
    from kadapt.trainer.bench_report import result_table

    extra_rates, extra_bundles = _split_extra(ctx.args)
    if (extra_rates and not accelerations) or (extra_bundles and not bundles):
        raise fail(ValueError(f"unexpected arguments {ctx.args}: only --R and --bundles take more values"))
    settings = BenchSettings(
        data=data,
        bundles=tuple(bundles or ()) + tuple(extra_bundles),
        accelerations=tuple(accelerations or ()) + tuple(extra_rates) or None,
        masks=tuple(name.strip() for name in masks.split(",") if name.strip()),
        num_acs=num_acs,
        quick=quick,
        threads=threads,
        seed=seed,
    )
    _run_scored_bench(
        "bench recon", lambda step: run_recon_benchmark(settings, progress=step), result_table, out
    )


@bench_app.command("sampling", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench_sampling_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="dataset (kadapt data build); its test split is scored")],
    recon: Annotated[
        str, typer.Option(help="classic method (cg-sense, ...) or recon bundle REPO/NAME/VERSION")
    ],
    out: Annotated[Path, typer.Option(help="JSON result file")],
    samplers: Annotated[
        list[Path] | None,
        typer.Option(help="fixed-mask / mnet bundles REPO/NAME/VERSION, e.g. --samplers a b"),
    ] = None,
    accelerations: Annotated[
        list[float] | None, typer.Option("--R", help="accelerations, e.g. --R 4 8 (default 4 8; quick 8)")
    ] = None,
    families: Annotated[str, typer.Option(help="comma-separated 1D mask families")] = ",".join(
        ("equispaced", "vd-random", "gaussian-1d", "centre-only", "energy-density")
    ),
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default W // 16, the trainer's)")] = None,
    greedy_slices: Annotated[
        int, typer.Option(min=1, help="training slices of the greedy population mask")
    ] = 16,
    search_recon: Annotated[
        str, typer.Option(help="recon inside greedy / oracle: cg-sense, sense, same")
    ] = "cg-sense",
    quick: Annotated[bool, typer.Option(help="CI-sized: 2 volumes x 2 slices, R 8, 4 greedy slices")] = False,
    threads: Annotated[int | None, typer.Option(help="threads (default: all cores)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the masks, the greedy slices and the bootstrap")] = 0,
) -> None:
    """Sampling policies (mask families, sampler bundles, greedy population mask, per-object oracle) under one
    reconstruction on the held-out test split."""

    from kadapt.trainer.bench_sampling import SamplingBenchSettings, run_sampling_benchmark
    from kadapt.trainer.bench_sampling_report import sampling_table

    extra_rates, extra_samplers = _split_extra(ctx.args)
    if (extra_rates and not accelerations) or (extra_samplers and not samplers):
        raise fail(ValueError(f"unexpected arguments {ctx.args}: only --R and --samplers take more values"))
    settings = SamplingBenchSettings(
        data=data,
        recon=recon,
        samplers=tuple(samplers or ()) + tuple(extra_samplers),
        accelerations=tuple(accelerations or ()) + tuple(extra_rates) or None,
        families=tuple(name.strip() for name in families.split(",") if name.strip()),
        num_acs=num_acs,
        quick=quick,
        seed=seed,
        greedy_slices=greedy_slices,
        search_recon=search_recon,
        threads=threads,
    )
    _run_scored_bench(
        "bench sampling", lambda step: run_sampling_benchmark(settings, progress=step), sampling_table, out
    )


@bench_app.command("tasks", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench_tasks_command(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="task dataset (kadapt data build --task both); test split scored")
    ],
    out: Annotated[Path, typer.Option(help="JSON result file")],
    patterns: Annotated[
        list[Path] | None,
        typer.Option(
            help="IGS / diffusion bundles REPO/NAME/VERSION from learn-pattern (default: learn them)"
        ),
    ] = None,
    points: Annotated[
        Path | None, typer.Option(help="diffusion 2D point scores (RUNS/point-scores.npy)")
    ] = None,
    loupe: Annotated[
        Path, typer.Option(help="LOUPE bundle (skipped when absent or its geometry differs)")
    ] = Path("models/loupe/1"),
    recon: Annotated[
        Path, typer.Option(help="learned recon bundle (skipped where it refuses the scan)")
    ] = Path("models/modl/2"),
    accelerations: Annotated[
        list[float] | None, typer.Option("--R", help="accelerations (default 4 8 16)")
    ] = None,
    num_acs: Annotated[
        int | None, typer.Option(help="ACS lines of the line patterns (default W // 32)")
    ] = None,
    dps_slices: Annotated[int, typer.Option(min=1, help="DPS slices per test volume (quick 1)")] = 2,
    dps_steps: Annotated[int, typer.Option(min=2, help="DPS sampler steps (quick 3)")] = 100,
    quick: Annotated[
        bool, typer.Option(help="CI-sized: quick patterns, 2 volumes x 2 slices, 3 DPS steps")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="threads (default: all cores)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the baseline masks, DPS noise and learned patterns")] = 0,
) -> None:
    """IGS patterns per task, the diffusion pattern, LOUPE, centre and equispaced on the test split: Dice, F1,
    zero-filled and learned-recon SSIM / PSNR / NMSE, DPS at the score network's size; per-volume values and
    paired intervals vs centre and equispaced."""
    from kadapt.trainer.bench_tasks import DEFAULT_ACCELERATIONS, TaskBenchSettings, run_tasks_benchmark
    from kadapt.trainer.bench_tasks_report import tasks_table

    extra_rates, extra_patterns = _split_extra(ctx.args)
    if (extra_rates and not accelerations) or (extra_patterns and not patterns):
        raise fail(ValueError(f"unexpected arguments {ctx.args}: only --R and --patterns take more values"))
    settings = TaskBenchSettings(
        data=data,
        patterns=tuple(patterns or ()) + tuple(extra_patterns),
        points=points,
        loupe=loupe,
        recon=recon,
        accelerations=tuple(accelerations or ()) + tuple(extra_rates) or DEFAULT_ACCELERATIONS,
        num_acs=num_acs,
        quick=quick,
        seed=seed,
        dps_slices=dps_slices,
        dps_steps=dps_steps,
        threads=threads,
    )
    _run_scored_bench(
        "bench tasks", lambda step: run_tasks_benchmark(settings, out, progress=step), tasks_table, out
    )


@bench_app.command("dynamic", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench_dynamic_command(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="cine dataset (kadapt data build --frames T); test split scored")
    ],
    out: Annotated[Path, typer.Option(help="JSON result file")],
    bundles: Annotated[
        list[Path] | None,
        typer.Option(
            help="ads bundles and dynamic vsharp baseline bundles REPO/NAME/VERSION, e.g. --bundles a b"
        ),
    ] = None,
    accelerations: Annotated[
        list[float] | None, typer.Option("--R", help="accelerations, e.g. --R 4 6 8 (default 4 6 8; quick 8)")
    ] = None,
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default: the dataset manifest's)")] = None,
    quick: Annotated[bool, typer.Option(help="CI-sized: 2 test volumes x 1 slice, R 8")] = False,
    threads: Annotated[int | None, typer.Option(help="threads for every method (default: all cores)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the family masks and the bootstrap / ASO")] = 0,
    context: Annotated[bool, typer.Option(help="zero-filled and CG-SENSE rows on kt-equispaced")] = True,
    markdown: Annotated[
        Path | None, typer.Option(help="also write the table as markdown (for docs/benchmarks.md)")
    ] = None,
) -> None:
    """Cine samplers (ADS cascades, the learned 'opt' pattern, mask families), each with its own dynamic
    vSHARP bundle, on the held-out test split: SSIM / PSNR / NMSE per frame and per volume on the centre
    2/3, paired comparison of ADS against the best baseline, seconds per slice."""

    from kadapt.trainer.bench_dynamic import DynamicBenchSettings, run_dynamic_benchmark
    from kadapt.trainer.bench_dynamic_report import dynamic_table, markdown_table

    extra_rates, extra_bundles = _split_extra(ctx.args)
    if (extra_rates and not accelerations) or (extra_bundles and not bundles):
        raise fail(ValueError(f"unexpected arguments {ctx.args}: only --R and --bundles take more values"))
    settings = DynamicBenchSettings(
        data=data,
        bundles=tuple(bundles or ()) + tuple(extra_bundles),
        accelerations=tuple(accelerations or ()) + tuple(extra_rates) or None,
        num_acs=num_acs,
        quick=quick,
        threads=threads,
        seed=seed,
        context=context,
    )
    _run_scored_bench(
        "bench dynamic", lambda step: run_dynamic_benchmark(settings, progress=step), dynamic_table, out
    )
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_table(json.loads(out.read_text())))
        console.print(f"wrote {markdown}")
