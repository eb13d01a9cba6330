"""``kadapt jobs dead-letters`` and ``kadapt jobs requeue`` against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus

runner = CliRunner()


def job(job_id: str) -> ReconJob:
    return ReconJob(
        job_id=job_id,
        scan_id=f"scan-{job_id}",
        method="cg-sense",
        num_acs=8,
        acceleration=4.0,
        kspace_path="k.npy",
        kspace_sha256="0" * 64,
        mask_path="m.npy",
        mask_sha256="1" * 64,
    )


def dead_letter(url: str, *job_ids: str, done: tuple[str, ...] = ()) -> None:
    """Enqueue ``job_ids``, deliver each once and give it up; jobs in ``done`` got a done result first."""

    async def main() -> None:
        queue = RedisJobQueue.from_url(url)
        try:
            for job_id in job_ids:
                await queue.enqueue(job(job_id))
                (delivery,) = await queue.claim("crashing", 1, 0)
                if job_id in done:
                    await queue.put_result(
                        ReconResult(job_id=job_id, scan_id="s", status=ReconStatus.done, method_requested="x")
                    )
                await queue.dead_letter(delivery, "worker crashed")
        finally:
            await queue.close()

    asyncio.run(main())


def test_requeue_needs_a_job_id_or_all() -> None:
    for arguments in ([], ["some-job", "--all"]):
        result = runner.invoke(app, ["jobs", "requeue", *arguments, "--redis", "redis://127.0.0.1:1/0"])
        assert result.exit_code == 2
        assert "exactly one of JOB_ID or --all" in result.output


def test_an_unreachable_redis_is_named() -> None:
    result = runner.invoke(app, ["jobs", "dead-letters", "--redis", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2
    assert "XRANGE" in result.output


@pytest.mark.integration
def test_list_then_requeue_one_and_all(redis_server: Any) -> None:
    url = redis_server.url
    dead_letter(url, "job-a", "job-b", "job-c", done=("job-c",))
    listed = runner.invoke(app, ["jobs", "dead-letters", "--redis", url, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(row["job_id"], row["scan_id"], row["deliveries"]) for row in rows] == [
        ("job-a", "scan-job-a", 1),
        ("job-b", "scan-job-b", 1),
        ("job-c", "scan-job-c", 1),
    ]
    assert all(row["reason"] == "worker crashed" for row in rows)
    table = runner.invoke(app, ["jobs", "dead-letters", "--redis", url])
    assert "job-a" in table.stdout
    assert "worker crashed" in table.stdout

    one = runner.invoke(app, ["jobs", "requeue", "job-a", "--redis", url])
    assert one.exit_code == 0, one.output
    assert "job-a: requeued" in one.stdout
    twice = runner.invoke(app, ["jobs", "requeue", "job-a", "--redis", url])
    assert twice.exit_code == 0
    assert "job-a: absent" in twice.stdout

    every = runner.invoke(app, ["jobs", "requeue", "--all"], env={"KADAPT_RECON_REDIS_URL": url})
    assert every.exit_code == 1  # job-c already has a done result: refused
    assert "job-b: requeued" in every.stdout
    assert "job-c: refused" in every.stdout
    left = json.loads(runner.invoke(app, ["jobs", "dead-letters", "--redis", url, "--json"]).stdout)
    assert [row["job_id"] for row in left] == ["job-c"]
