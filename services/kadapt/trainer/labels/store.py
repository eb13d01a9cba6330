"""Sampler training labels on disk: the :class:`LabelSet`, its HDF5 file and the settings-keyed cache.

A label file holds one binary line mask ``(W,)`` per training slice (the target an MNet learns, seed 000
eq. 6 / seed 001 eq. 2), plus everything that produced the masks. Label generation is the expensive
part of MNet training (seed 001: ICD labels are "precomputed ... offline"), so files are cached under a
path that contains a hash of the generator's settings: a changed seed, alpha grid, loss, reconstructor
or dataset gives another file, never a stale hit.

Layout of one file (h5py)::

    masks       (N, W) bool     every row exactly line_budget(W, R, num_acs) lines, ACS included
    slices      (N,)   int64    slice index within its volume
    volumes     (N,)   str      volume name (the dataset manifest's)
    per_slice/  (N,)   datasets optional per-slice numbers (losses, acceptance flags)
    attrs: format, method, acceleration, num_acs, width, settings (JSON), metrics (JSON)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import h5py
import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError, NotFoundError
from kadapt.masks import acs_lines, line_budget

LabelMethod = Literal["mask-backward", "icd"]
LABEL_METHODS: tuple[str, ...] = get_args(LabelMethod)
#: Bumped when the file layout changes; older files are refused by :func:`load_labels`.
LABEL_FORMAT = 1
#: Hex digits of the settings hash in a file name (64 bits: collisions are not a practical concern).
HASH_DIGITS = 16


@dataclass(frozen=True)
class LabelSet:
    """Binary label masks for the slices of one split at one acceleration.

    ``masks`` ``(N, W)`` bool, each row exactly ``line_budget(width, acceleration, num_acs)`` lines with
    the centred ACS block; ``volumes`` ``(N,)`` names and ``slices`` ``(N,)`` indices say which slice a row
    labels. ``settings`` is everything that produced the masks (JSON-serialisable; its hash keys the
    cache), ``metrics`` summary numbers (JSON-serialisable), ``per_slice`` optional ``(N,)`` arrays
    (e.g. ``label_loss``, ``start_loss``, ``accepted``). Construction validates all of it
    (InvalidInputError naming the bad value).
    """

    method: LabelMethod
    acceleration: float
    num_acs: int
    width: int
    masks: NDArray[np.bool_]
    volumes: tuple[str, ...]
    slices: NDArray[np.int64]
    settings: dict[str, Any]
    metrics: dict[str, Any]
    per_slice: dict[str, NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in LABEL_METHODS:
            raise InvalidInputError(f"label method must be one of {list(LABEL_METHODS)}, got {self.method!r}")
        budget = line_budget(self.width, self.acceleration, self.num_acs)
        masks = np.asarray(self.masks)
        if masks.dtype != np.bool_ or masks.ndim != 2 or masks.shape[1] != self.width:
            raise InvalidInputError(
                f"label masks must be bool (N, W={self.width}), got {masks.dtype} {masks.shape}"
            )
        count = masks.shape[0]
        if len(self.volumes) != count or np.shape(self.slices) != (count,):
            raise InvalidInputError(
                f"{count} masks but {len(self.volumes)} volume names and slices of shape "
                f"{np.shape(self.slices)}"
            )
        lines = masks.sum(axis=1)
        wrong = np.flatnonzero(lines != budget)
        if wrong.size:
            raise InvalidInputError(
                f"label {int(wrong[0])} holds {int(lines[wrong[0]])} lines, not the budget {budget} "
                f"(W={self.width}, R={self.acceleration}, num_acs={self.num_acs})"
            )
        acs = acs_lines(self.width, self.num_acs)
        missing = np.flatnonzero(~masks[:, acs].all(axis=1))
        if missing.size:
            raise InvalidInputError(
                f"label {int(missing[0])} misses ACS lines of the centred block {acs.tolist()}"
            )
        for name, values in self.per_slice.items():
            if np.shape(values) != (count,):
                raise InvalidInputError(f"per_slice[{name!r}] has shape {np.shape(values)}, need ({count},)")
        _canonical_json(self.settings, "settings")
        _canonical_json(self.metrics, "metrics")

    @property
    def budget(self) -> int:
        """Lines per mask, ACS included: ``line_budget(width, acceleration, num_acs)``."""
        return line_budget(self.width, self.acceleration, self.num_acs)

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def _canonical_json(value: Mapping[str, Any], name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"label {name} must be JSON-serialisable (finite numbers): {error}"
        ) from error


def settings_hash(settings: Mapping[str, Any]) -> str:
    """First :data:`HASH_DIGITS` hex digits of sha256 over the canonical JSON of ``settings``
    (sorted keys, no whitespace): equal settings, equal hash, whatever the key order."""
    canonical = _canonical_json(settings, "settings")
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_DIGITS]


def label_path(
    cache_dir: Path, split: str, method: str, acceleration: float, num_acs: int, settings_hash: str
) -> Path:
    """Where the labels of (split, method, R, num_acs, settings) live:
    ``cache_dir/split/<method>-R<R>-acs<num_acs>-<settings_hash>.h5`` (``R`` as ``%g``: 4 -> ``R4``)."""
    if method not in LABEL_METHODS:
        raise InvalidInputError(f"label method must be one of {list(LABEL_METHODS)}, got {method!r}")
    if not split or "/" in split or not settings_hash.isalnum():
        raise InvalidInputError(f"bad split {split!r} or settings hash {settings_hash!r} for a label path")
    name = f"{method}-R{float(acceleration):g}-acs{int(num_acs)}-{settings_hash}.h5"
    return Path(cache_dir) / split / name


def save_labels(path: Path, labels: LabelSet) -> Path:
    """Write ``labels`` to ``path`` (HDF5, layout in the module docstring), atomically: a temporary file in
    the same folder renamed over ``path``, so a reader never sees half a file. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(temporary, "w") as handle:
            handle.attrs["format"] = LABEL_FORMAT
            handle.attrs["method"] = labels.method
            handle.attrs["acceleration"] = float(labels.acceleration)
            handle.attrs["num_acs"] = int(labels.num_acs)
            handle.attrs["width"] = int(labels.width)
            handle.attrs["settings"] = _canonical_json(labels.settings, "settings")
            handle.attrs["metrics"] = _canonical_json(labels.metrics, "metrics")
            handle.create_dataset("masks", data=np.asarray(labels.masks, dtype=np.bool_), compression="gzip")
            handle.create_dataset("slices", data=np.asarray(labels.slices, dtype=np.int64))
            handle.create_dataset("volumes", data=list(labels.volumes), dtype=h5py.string_dtype("utf-8"))
            group = handle.create_group("per_slice")
            for name, values in labels.per_slice.items():
                group.create_dataset(name, data=np.asarray(values))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_labels(path: Path) -> LabelSet:
    """Read a label file written by :func:`save_labels`. NotFoundError if there is none at ``path``;
    InvalidInputError (naming the file) if it is not a label file of this format."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no label file at {path}")
    try:
        with h5py.File(path, "r") as handle:
            version = int(handle.attrs.get("format", -1))
            if version != LABEL_FORMAT:
                raise InvalidInputError(f"{path}: label format {version}, this code reads {LABEL_FORMAT}")
            per_slice = {name: np.asarray(data[()]) for name, data in handle["per_slice"].items()}
            return LabelSet(
                method=str(handle.attrs["method"]),  # type: ignore[arg-type]  # validated in __post_init__
                acceleration=float(handle.attrs["acceleration"]),
                num_acs=int(handle.attrs["num_acs"]),
                width=int(handle.attrs["width"]),
                masks=np.asarray(handle["masks"][()], dtype=np.bool_),
                volumes=tuple(name.decode("utf-8") for name in handle["volumes"][()]),
                slices=np.asarray(handle["slices"][()], dtype=np.int64),
                settings=json.loads(handle.attrs["settings"]),
                metrics=json.loads(handle.attrs["metrics"]),
                per_slice=per_slice,
            )
    except (OSError, KeyError) as error:
        raise InvalidInputError(f"{path} is not a readable label file: {error}") from error


def cached_labels(
    cache_dir: Path,
    split: str,
    method: LabelMethod,
    acceleration: float,
    num_acs: int,
    settings: Mapping[str, Any],
    generate: Callable[[], LabelSet],
) -> tuple[LabelSet, Path, bool]:
    """The labels for ``settings`` from the cache, or ``generate()``-d and saved there.

    Returns ``(labels, path, hit)``. A hit needs a file at :func:`label_path` for the hash of
    ``settings`` whose stored settings are identical (guards against a hash collision or a hand-edited
    file); ``generate()`` must return labels whose ``settings`` equal ``settings`` (InvalidInputError
    otherwise, so the cache key always describes the file).
    """
    key = settings_hash(settings)
    path = label_path(cache_dir, split, method, acceleration, num_acs, key)
    expected = _canonical_json(settings, "settings")
    if path.is_file():
        stored = load_labels(path)
        if _canonical_json(stored.settings, "settings") == expected:
            return stored, path, True
    labels = generate()
    if _canonical_json(labels.settings, "settings") != expected:
        raise InvalidInputError(f"generated labels carry other settings than their cache key {key}")
    if (labels.method, labels.num_acs) != (method, num_acs) or not math.isclose(
        labels.acceleration, acceleration
    ):
        raise InvalidInputError(
            f"generated labels are {labels.method} R={labels.acceleration} num_acs={labels.num_acs}, "
            f"asked for {method} R={acceleration} num_acs={num_acs}"
        )
    save_labels(path, labels)
    return labels, path, False


def data_fingerprint(volumes: tuple[str, ...], slices: NDArray[np.int64], arrays: list[NDArray[Any]]) -> str:
    """sha256 (hex) over the slice identities and the bytes of their k-space ``arrays`` (each ``(C, H, W)``):
    the part of the label settings that says which data they were made from."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(volumes), [int(index) for index in slices]]).encode("utf-8"))
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(str((contiguous.dtype.str, contiguous.shape)).encode("utf-8"))
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


__all__ = [
    "LABEL_METHODS",
    "LabelMethod",
    "LabelSet",
    "cached_labels",
    "data_fingerprint",
    "label_path",
    "load_labels",
    "save_labels",
    "settings_hash",
]
