"""``kadapt jobs``: the operator's view of the recon queue's dead letters (list them, requeue them).

Both commands talk to Redis directly (``--redis``, else ``KADAPT_RECON_REDIS_URL``, else ``kadapt up``'s
``redis://127.0.0.1:6390/0``) with the queue's default key names, or the ``KADAPT_RECON_STREAM`` /
``_DEAD_STREAM`` / ``_RESULT_PREFIX`` / ``_GROUP`` a deployment overrides them with. The rules are in
:mod:`kadapt.jobs.dead_letters`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from kadapt.cli.common import console, fail
from kadapt.errors import InvalidInputError, KadaptError

if TYPE_CHECKING:  # the queue modules load numpy and redis: imported when a command runs
    from kadapt.jobs.dead_letters import DeadLetterEntry, RequeueReport
    from kadapt.jobs.redis_queue import RedisJobQueue

T = TypeVar("T")

jobs_app = typer.Typer(no_args_is_help=True, help="The recon job queue: dead letters and requeueing.")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6390/0"
RedisOption = Annotated[
    str,
    typer.Option(
        "--redis",
        envvar="KADAPT_RECON_REDIS_URL",
        help="Redis URL of the job queue (default: kadapt up's)",
    ),
]


def _queue(url: str) -> RedisJobQueue:
    from kadapt.jobs.redis_queue import (
        DEFAULT_DEAD_STREAM,
        DEFAULT_GROUP,
        DEFAULT_RESULT_PREFIX,
        DEFAULT_STREAM,
        RedisJobQueue,
    )

    environment = os.environ
    return RedisJobQueue.from_url(
        url,
        stream=environment.get("KADAPT_RECON_STREAM", DEFAULT_STREAM),
        group=environment.get("KADAPT_RECON_GROUP", DEFAULT_GROUP),
        dead_stream=environment.get("KADAPT_RECON_DEAD_STREAM", DEFAULT_DEAD_STREAM),
        result_prefix=environment.get("KADAPT_RECON_RESULT_PREFIX", DEFAULT_RESULT_PREFIX),
    )


def _run(url: str, action: Callable[[RedisJobQueue], Awaitable[T]]) -> T:
    async def main() -> T:
        queue = _queue(url)
        try:
            return await action(queue)
        finally:
            await queue.close()

    try:
        return asyncio.run(main())
    except KadaptError as error:
        raise fail(error) from error


def _when(entry: DeadLetterEntry) -> str:
    if entry.dead_unix_ms is None:
        return "?"
    moment = datetime.fromtimestamp(entry.dead_unix_ms / 1000.0, tz=timezone.utc)
    return moment.isoformat(timespec="seconds")


@jobs_app.command("dead-letters")
def dead_letters(
    redis: RedisOption = DEFAULT_REDIS_URL,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array on stdout")] = False,
) -> None:
    """List the recon jobs given up on: job id, scan id, deliveries, reason and when (UTC)."""
    from kadapt.jobs.dead_letters import list_dead_letters

    entries = _run(redis, list_dead_letters)
    if as_json:
        sys.stdout.write(json.dumps([entry.public() for entry in entries], indent=2) + "\n")
        return
    if not entries:
        console.print("no dead letters")
        return
    for entry in entries:
        sys.stdout.write(
            f"{entry.job_id or '?':34s} scan {entry.scan_id or '?':34s} deliveries {entry.deliveries:<3d} "
            f"{_when(entry)}  {entry.reason}\n"
        )
    console.print(f"{len(entries)} dead letter(s); `kadapt jobs requeue JOB_ID|--all` puts them back")


def _print_reports(reports: list[RequeueReport]) -> None:
    for report in reports:
        where = f" as {report.message_id}" if report.message_id else ""
        sys.stdout.write(f"{report.job_id}: {report.outcome.value}{where} ({report.detail})\n")


@jobs_app.command("requeue")
def requeue_command(
    job_id: Annotated[str | None, typer.Argument(help="the dead-lettered job's id")] = None,
    every: Annotated[bool, typer.Option("--all", help="requeue every dead-lettered job")] = False,
    redis: RedisOption = DEFAULT_REDIS_URL,
) -> None:
    """Put a dead-lettered job back on the queue with a fresh delivery count (idempotent). A job that
    already has a result is refused (exit status 1)."""
    from kadapt.jobs.dead_letters import RequeueOutcome, requeue, requeue_all

    if every and job_id is None:
        reports = _run(redis, requeue_all)
        if not reports:
            console.print("no dead letters; nothing to requeue")
    elif job_id is not None and not every:
        single = job_id

        async def one(queue: RedisJobQueue) -> list[RequeueReport]:
            return [await requeue(queue, single)]

        reports = _run(redis, one)
    else:
        raise fail(InvalidInputError("give exactly one of JOB_ID or --all"))
    _print_reports(reports)
    if any(report.outcome == RequeueOutcome.refused for report in reports):
        raise typer.Exit(code=1)
