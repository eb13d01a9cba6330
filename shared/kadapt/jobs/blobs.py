"""Arrays on a shared volume, passed between processes by path + sha256 (never through Redis).

The architecture (section 5) keeps k-space out of the queue: a 32 MiB value costs about 120 ms to SET and
bloats the AOF, while ``np.save`` to a local volume takes about 25 ms. A job therefore carries the path of
an ``.npy`` file under the shared blob root and the sha256 of its bytes; the reader verifies both.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import ChecksumMismatchError, InsufficientStorageError, InvalidInputError, NotFoundError

#: Keys are relative, slash-separated names of safe characters; ``.npy`` is appended.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
_READ_CHUNK = 1 << 20


#: ``errno`` values of a full volume: no space left, or the user's quota spent.
VOLUME_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def volume_full(error: OSError, what: str) -> InsufficientStorageError | None:
    """The typed error for ``error`` if it says the volume is full (``ENOSPC`` / ``EDQUOT``), else None;
    ``what`` names the write that failed."""
    if error.errno in VOLUME_FULL_ERRNOS:
        return InsufficientStorageError(f"{what}: the volume is full ({error.strerror or error})")
    return None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """``.npy`` blobs under one root directory (a shared volume in a deployment).

    Paths handed out are absolute; :meth:`get_array` also accepts paths relative to the root. Every read
    checks that the path stays inside the root, so a job cannot make a worker read arbitrary files.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path_for_key(self, key: str) -> Path:
        if not _KEY_PATTERN.match(key) or ".." in key.split("/"):
            raise InvalidInputError(
                f"blob key {key!r} must be a relative name of letters, digits, '.', '_', '-' and '/'"
            )
        return self.root / f"{key}.npy"

    def resolve(self, path: str | Path) -> Path:
        """The absolute path of a blob; :class:`InvalidInputError` if it lies outside the root."""
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidInputError(f"blob path {str(path)!r} lies outside the blob root {str(self.root)!r}")
        return resolved

    def put_array(self, key: str, array: NDArray[Any]) -> tuple[str, str]:
        """Write ``array`` (any shape and dtype, no objects) as ``<root>/<key>.npy``.

        Returns ``(absolute path, sha256 of the file bytes)``. The write is atomic (a temporary file in the
        same directory, fsync, ``os.replace``) so a reader never sees a half-written blob; a failed write
        leaves nothing behind, and a full volume raises :class:`InsufficientStorageError`.
        """
        if array.dtype.hasobject:
            raise InvalidInputError(f"blob {key!r}: object arrays (dtype {array.dtype}) are not stored")
        target = self._path_for_key(key)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        try:
            self._write_atomically(target, data)
        except OSError as error:
            full = volume_full(error, f"writing blob {key!r} under {str(self.root)!r}")
            if full is not None:
                raise full from error
            raise
        return str(target), sha256_bytes(data)

    @staticmethod
    def _write_atomically(target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get_array(self, path: str | Path, sha256: str) -> NDArray[Any]:
        """Read the blob at ``path`` after checking it lies under the root and its bytes hash to ``sha256``.

        Raises :class:`InvalidInputError` (outside the root, or not a valid ``.npy``),
        :class:`NotFoundError` (missing file), :class:`ChecksumMismatchError` (wrong bytes).
        """
        resolved = self.resolve(path)
        try:
            data = resolved.read_bytes()
        except FileNotFoundError as err:
            raise NotFoundError(f"blob {str(resolved)!r} does not exist") from err
        except IsADirectoryError as err:
            raise InvalidInputError(f"blob path {str(resolved)!r} is a directory") from err
        # Hash the bytes we then parse (one read), so the file cannot change between check and load.
        actual = sha256_bytes(data)
        if actual != sha256.lower():
            raise ChecksumMismatchError(
                f"blob {str(resolved)!r} has sha256 {actual}, expected {sha256}",
                path=str(resolved),
            )
        try:
            array: NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise InvalidInputError(f"blob {str(resolved)!r} is not a valid .npy array: {err}") from err
        return array

    def file_sha256(self, path: str | Path) -> str:
        """sha256 of the blob file at ``path`` (streamed in 1 MiB chunks)."""
        resolved = self.resolve(path)
        digest = hashlib.sha256()
        try:
            with resolved.open("rb") as handle:
                for chunk in iter(lambda: handle.read(_READ_CHUNK), b""):
                    digest.update(chunk)
        except FileNotFoundError as err:
            raise NotFoundError(f"blob {str(resolved)!r} does not exist") from err
        return digest.hexdigest()

    def delete(self, path: str | Path) -> bool:
        """Remove the blob at ``path`` (inside the root); returns False if it did not exist."""
        resolved = self.resolve(path)
        try:
            resolved.unlink()
        except FileNotFoundError:
            return False
        return True
