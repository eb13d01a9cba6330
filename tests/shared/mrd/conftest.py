"""Fixtures for the MRD tests: real MRD raw files from ismrmrd-tools' Shepp-Logan generator."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"


@pytest.fixture(scope="session")
def shepp_logan_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(*args)`` runs the generator with ``args`` once per argument set and returns the file path;
    skips where ismrmrd-tools is not installed."""
    if shutil.which(GENERATOR) is None:
        pytest.skip(f"{GENERATOR} is not installed (Debian package ismrmrd-tools, `make debs`)")
    made: dict[tuple[str, ...], Path] = {}

    def make(*args: str) -> Path:
        if args not in made:
            out = tmp_path_factory.mktemp("shepp_logan") / "raw.h5"
            subprocess.run([GENERATOR, *args, "-o", str(out)], check=True, capture_output=True, timeout=120)
            made[args] = out
        return made[args]

    return make
