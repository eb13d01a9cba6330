"""``kadapt data build --frames T``: the cine build through the CLI (issue 5, contract C1)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.data.cine import list_cine, load_cine_manifest, read_cine


def test_cli_quick_build(tmp_path: Path) -> None:
    """``kadapt data build --frames 4 --quick`` on the installed anatomy: a tiny, valid cine set."""
    out = tmp_path / "cine"
    result = CliRunner().invoke(app, ["data", "build", "--frames", "4", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = load_cine_manifest(out)
    assert (manifest.frames, manifest.size, manifest.coils, len(manifest.volumes)) == (4, 32, 2, 3)
    assert read_cine(list_cine(out, "test")[0]).kspace.shape == (2, 4, 2, 32, 32)
    refused = CliRunner().invoke(app, ["data", "build", "--quick", "--out", str(tmp_path / "no")])
    assert refused.exit_code != 0
    assert "--frames" in refused.output
