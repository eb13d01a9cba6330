"""A model repository on disk: ``<repository>/<name>/<version>/manifest.json`` plus the bundle's files.

The layout is Triton's model repository: one directory per model, one sub-directory per version, and
"latest" means the highest version under natural sort (``10 > 9``). Versions are immutable once written:
:func:`write_bundle` assembles a new version in a hidden sibling directory and renames it into place, so
a service scanning the repository never sees a half-written bundle. :func:`load_bundle` verifies the
sha256 of every file the manifest lists before anyone may use it (services report ready only then).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kadapt.bundles.manifest import (
    BUNDLE_NAME_PATTERN,
    BUNDLE_VERSION_PATTERN,
    MANIFEST_FILENAME,
    Manifest,
    check_bundle_filename,
    natural_version_key,
    sha256_bytes,
    sha256_file,
)
from kadapt.errors import BundleError, BundleNotFoundError, ChecksumMismatchError

_NAME_RE = re.compile(BUNDLE_NAME_PATTERN)
_VERSION_RE = re.compile(BUNDLE_VERSION_PATTERN)


@dataclass(frozen=True)
class BundleRef:
    """A ``<name>/<version>`` directory holding a ``manifest.json`` (not yet parsed or verified)."""

    name: str
    version: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: every file listed in ``manifest.files`` matched its sha256 when loaded."""

    path: Path
    manifest: Manifest

    def file(self, filename: str) -> Path:
        """Path of one of the bundle's files; ``BundleError`` if the manifest does not list it."""
        if filename not in self.manifest.files:
            raise BundleError(
                f"bundle {self.manifest.ref} has no file {filename!r}; it lists {sorted(self.manifest.files)}"
            )
        return self.path / filename


def list_bundle_refs(repository: Path) -> list[BundleRef]:
    """Every ``<name>/<version>/manifest.json`` under ``repository``, sorted by name then natural version.

    Hidden directories (in-progress writes) are skipped; a missing repository lists nothing.
    """
    if not repository.is_dir():
        return []
    refs: list[BundleRef] = []
    for model_dir in sorted(repository.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        versions = [
            version_dir
            for version_dir in model_dir.iterdir()
            if version_dir.is_dir()
            and not version_dir.name.startswith(".")
            and (version_dir / MANIFEST_FILENAME).is_file()
        ]
        for version_dir in sorted(versions, key=lambda d: natural_version_key(d.name)):
            refs.append(BundleRef(name=model_dir.name, version=version_dir.name, path=version_dir))
    return refs


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse ``bundle_dir/manifest.json`` (no checksum verification); ``BundleError`` naming the file
    when it is unreadable, invalid, or names another bundle than its directory."""
    manifest_path = bundle_dir / MANIFEST_FILENAME
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as err:
        raise BundleError(f"cannot read {manifest_path}: {err}") from err
    try:
        manifest = Manifest.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise BundleError(
            f"{manifest_path} is not a valid manifest ({err.error_count()} errors; {where}: {first['msg']})"
        ) from err
    expected = (bundle_dir.parent.name, bundle_dir.name)
    if (manifest.name, manifest.version) != expected:
        raise BundleError(
            f"{manifest_path} describes {manifest.ref} but lives in {expected[0]}/{expected[1]}"
        )
    return manifest


def list_bundles(repository: Path) -> list[Manifest]:
    """The manifests of every bundle version in ``repository`` (parsed, not checksum-verified), sorted
    by name then natural version. Raises ``BundleError`` on the first invalid manifest."""
    return [read_manifest(ref.path) for ref in list_bundle_refs(repository)]


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every file of ``manifest.files`` against its sha256.

    Raises ``BundleError`` naming a listed file that is missing and ``ChecksumMismatchError`` naming a
    file whose content changed.
    """
    for filename, expected in sorted(manifest.files.items()):
        path = bundle_dir / filename
        if not path.is_file():
            raise BundleError(f"bundle {manifest.ref}: file {filename!r} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatchError(
                f"bundle {manifest.ref}: file {filename!r} has sha256 {actual}, manifest says {expected}",
                file=filename,
                bundle=manifest.ref,
            )


def load_bundle(repository: Path, name: str, version: str | None = None) -> Bundle:
    """Load and verify bundle ``name`` at ``version`` (``None``: the latest, highest natural version).

    Raises ``BundleNotFoundError`` naming what was looked for, ``BundleError`` for an invalid manifest or
    a missing file and ``ChecksumMismatchError`` naming the file whose sha256 differs.
    """
    if not _NAME_RE.match(name):
        raise BundleNotFoundError(f"no bundle {name!r} in {repository}: not a valid bundle name")
    model_dir = repository / name
    if version is None:
        versions = [ref for ref in list_bundle_refs(repository) if ref.name == name]
        if not versions:
            raise BundleNotFoundError(f"no version of bundle {name!r} in {repository}")
        bundle_dir = versions[-1].path
    else:
        bundle_dir = model_dir / version
        if not _VERSION_RE.match(version) or not (bundle_dir / MANIFEST_FILENAME).is_file():
            raise BundleNotFoundError(f"no bundle {name}/{version} in {repository}")
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    return Bundle(path=bundle_dir, manifest=manifest)


def write_bundle(
    repository: Path,
    manifest: Manifest,
    files: Mapping[str, bytes | Path],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write a new bundle version; returns it loaded and verified.

    ``manifest.files`` is replaced by the sha256 of ``files`` (file name -> content bytes, or a path to
    copy). The version is assembled in a hidden directory and renamed into place; an existing version is
    refused with ``BundleError`` unless ``overwrite`` (versions are meant to be immutable).
    """
    try:
        for filename in files:
            check_bundle_filename(filename)
    except ValueError as err:
        raise BundleError(f"cannot write bundle {manifest.ref}: {err}") from err
    if not files:
        raise BundleError(f"cannot write bundle {manifest.ref}: it has no files")
    model_dir = repository / manifest.name
    final_dir = model_dir / manifest.version
    if final_dir.exists() and not overwrite:
        raise BundleError(f"bundle {manifest.ref} already exists at {final_dir}; versions are immutable")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".incoming-{manifest.version}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        digests: dict[str, str] = {}
        for filename, content in sorted(files.items()):
            target = staging / filename
            if isinstance(content, Path):
                shutil.copyfile(content, target)
                digests[filename] = sha256_file(target)
            else:
                target.write_bytes(content)
                digests[filename] = sha256_bytes(content)
        final_manifest = manifest.model_copy(update={"files": digests})
        # Re-validate: model_copy(update=...) skips validation, the manifest on disk must be strict.
        final_manifest = Manifest.model_validate_json(final_manifest.model_dump_json())
        (staging / MANIFEST_FILENAME).write_text(final_manifest.model_dump_json(indent=2) + "\n")
        if final_dir.exists():
            retired = model_dir / f".retired-{manifest.version}-{uuid.uuid4().hex}"
            final_dir.rename(retired)
            shutil.rmtree(retired)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(repository, manifest.name, manifest.version)
