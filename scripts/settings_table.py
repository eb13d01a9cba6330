"""Print (or write into docs/operations.md) the tables of every service's environment variables and
Prometheus metrics.

Settings come from the pydantic-settings classes themselves (``GatewaySettings``, ``SamplerSettings``,
``ReconSettings``): name = prefix + field name upper-cased, type, default, and the field's description,
or a note below for the fields that have none. Metrics come from each service's ``/metrics`` after a
start-up (lifespan) in process, with the demo bundles of ``models/``. ``tests/deploy/test_operations_doc.py``
checks that every setting and metric is documented, so a new one fails the test until this script is
run again::

    .venv/bin/python scripts/settings_table.py            # print the tables
    .venv/bin/python scripts/settings_table.py --write    # replace them in docs/operations.md
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from kadapt.gateway.settings import GatewaySettings
from kadapt.recon.settings import ReconSettings
from kadapt.sampler.settings import SamplerSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
MARKERS = {
    "settings": (
        "<!-- settings-table:begin (scripts/settings_table.py --write) -->",
        "<!-- settings-table:end -->",
    ),
    "metrics": (
        "<!-- metrics-table:begin (scripts/settings_table.py --write) -->",
        "<!-- metrics-table:end -->",
    ),
}
SERVICES: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "sampler": SamplerSettings,
    "recon": ReconSettings,
}
# Descriptions of the fields whose Field() carries none (keep them short; the class docstrings say more).
NOTES = {
    "KADAPT_GATEWAY_REDIS_URL": "sessions and recon jobs in Redis (`redis://host:6379/0`); unset: in memory",
    "KADAPT_GATEWAY_SAMPLER_URL": "the sampler service (a Kubernetes Service / compose name for replicas)",
    "KADAPT_GATEWAY_DATA_DIR": "`scans/` (per-scan k-space) and `blobs/` (shared with recon)",
    "KADAPT_GATEWAY_MAX_BODY_BYTES": "largest request body (413 above)",
    "KADAPT_GATEWAY_SAMPLER_MARGIN_FRACTION": "share of the deadline kept for recording and answering",
    "KADAPT_GATEWAY_SAMPLER_POOL_SIZE": "HTTP connections to the sampler",
    "KADAPT_GATEWAY_LOG_JSON": "structured JSON logs (structlog); false: console format",
    "KADAPT_GATEWAY_LOG_LEVEL": "log level",
    "KADAPT_SAMPLER_MODEL_REPOSITORY": "bundle repository `<name>/<version>/manifest.json`",
    "KADAPT_SAMPLER_MAX_INFLIGHT": "plans computing at once; the rest wait until their deadline",
    "KADAPT_SAMPLER_WARMUP": "run one plan per policy before reporting ready",
    "KADAPT_SAMPLER_ORT_THREADS": "ONNX Runtime intra-op threads per MNet session",
    "KADAPT_SAMPLER_FALLBACK_MARGIN_MS": "time kept before a deadline to serve a model policy's fallback",
    "KADAPT_SAMPLER_MNET_FALLBACK": "mask family an MNet bundle falls back to when its manifest names none",
    "KADAPT_SAMPLER_MAX_BODY_BYTES": "largest plan body (413 above)",
    "KADAPT_RECON_REDIS_URL": "the job stream's Redis; unset: an in-memory queue (embedded only)",
    "KADAPT_RECON_BLOB_DIR": "the shared blob directory (the gateway's `<data_dir>/blobs`)",
    "KADAPT_RECON_CONSUMER": "consumer name in the group; default `<hostname>-<pid>` (unique per pod)",
    "KADAPT_RECON_WORKERS": "consumers in this process",
    "KADAPT_RECON_MAX_DELIVERIES": "deliveries before a job is dead-lettered",
    "KADAPT_RECON_MODEL_REPOSITORY": "bundle repository for learned reconstructions",
    "KADAPT_RECON_STREAM": "Redis stream of recon jobs",
    "KADAPT_RECON_GROUP": "consumer group of the recon workers",
    "KADAPT_RECON_DEAD_STREAM": "dead-letter stream",
    "KADAPT_RECON_RESULT_PREFIX": "key prefix of job results (idempotent writes)",
}


def env_names(settings: type[BaseSettings]) -> list[str]:
    """``KADAPT_<SERVICE>_<FIELD>`` for every field of ``settings``, in declaration order."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper() for name in settings.model_fields]


def _type_name(annotation: object) -> str:
    text = (
        str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    )
    for noise in ("typing.", "pathlib.", "pydantic.types."):
        text = text.replace(noise, "")
    return text.replace("Literal", "one of ").replace("SecretStr", "secret str")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: object = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return "unset"
    return f"`{value}`"


def table(service: str, settings: type[BaseSettings]) -> str:
    """The markdown table of one service's variables."""
    rows = [f"#### {service}", "", "| variable | type | default | what |", "|---|---|---|---|"]
    for env, field in zip(env_names(settings), settings.model_fields.values(), strict=True):
        what = field.description or NOTES.get(env, "")
        default = "`<hostname>-<pid>`" if env == "KADAPT_RECON_CONSUMER" else _default(field)
        cells = [f"`{env}`", _type_name(field.annotation), default, what]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def tables() -> str:
    return "\n\n".join(table(name, settings) for name, settings in SERVICES.items())


def metric_families(service: str) -> list[tuple[str, str, str]]:
    """``(name, type, help)`` of the kadapt metrics ``service`` exports once started (process and
    ``*_created`` series left out)."""
    import asyncio
    import os
    import tempfile

    import httpx

    from kadapt.launcher.factories import FACTORIES

    async def scrape() -> str:
        app = FACTORIES[service]()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                return (await client.get("/metrics")).text

    with tempfile.TemporaryDirectory() as data:
        os.environ.update(
            {
                "KADAPT_GATEWAY_DATA_DIR": data,
                "KADAPT_GATEWAY_MRD_PORT": "0",
                "KADAPT_RECON_BLOB_DIR": f"{data}/blobs",
                "KADAPT_SAMPLER_MODEL_REPOSITORY": str(ROOT / "models"),
                "KADAPT_RECON_MODEL_REPOSITORY": str(ROOT / "models"),
            }
        )
        text = asyncio.run(scrape())
    helps: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP kadapt_"):
            name, _, what = line[len("# HELP ") :].partition(" ")
            helps[name] = what
        elif line.startswith("# TYPE kadapt_"):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            kinds[name] = kind
    return [
        (name, kinds.get(name, ""), what)
        for name, what in helps.items()
        if not (name.endswith("_created") and kinds.get(name) == "gauge")
    ]


def metrics_tables() -> str:
    rows: list[str] = []
    for service in SERVICES:
        rows += [f"#### {service}", "", "| metric | type | what |", "|---|---|---|"]
        for name, kind, what in metric_families(service):
            rows.append(f"| `{name}` | {kind} | {what.replace('|', '/')} |")
        rows.append("")
    return "\n".join(rows).rstrip()


def _replace(text: str, section: str, content: str) -> str:
    begin, end = MARKERS[section]
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise SystemExit(f"markers {begin!r} / {end!r} not found")
    return f"{head}{begin}\n{content}\n{end}{tail}"


def write(doc: Path = DOC) -> None:
    """Replace the text between the markers in ``doc`` with freshly generated tables."""
    text = _replace(doc.read_text(), "settings", tables())
    doc.write_text(_replace(text, "metrics", metrics_tables()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(tables())
        print()
        print(metrics_tables())
