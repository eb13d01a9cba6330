"""What every ``kadapt`` command shares: the stderr console, the error exit, the progress bar."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def fail(error: Exception) -> typer.Exit:
    """Print ``error`` and return the exit (code 2) to raise."""
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=2)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def extra_accelerations(ctx: typer.Context) -> list[float]:
    """``--R 4 8``: click leaves the values after the first as extra arguments; they must be numbers."""
    try:
        return [float(value) for value in ctx.args]
    except ValueError as error:
        raise fail(
            ValueError(f"unexpected arguments {ctx.args}: only accelerations may follow --R")
        ) from error
