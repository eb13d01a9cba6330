"""The masks a sampler bundle serves, outside the sampler service: ``mnet`` and ``fixed-mask`` bundles.

The trainer post-trains reconstructions on the masks a sampler actually serves (issue 4, ``kadapt train
recon --policy BUNDLE``) and benchmarks compare them; both need, for one scan, exactly the plan the sampler
service would send back for its first round (nothing acquired beyond the ACS block):

- ``mnet`` (:mod:`kadapt.nn.mnet_bundle`, served by the sampler's ``MNetBundlePolicy``): ``model.onnx``
  maps the scan's raw ACS k-space ``acs`` float32 ``(1, C, H, num_acs, 2)`` (real / imaginary last,
  normalised inside the graph) to ``scores (1, W)``; the plan is the ACS block plus the top
  ``round(W / R) - num_acs`` scored free lines (:func:`kadapt.masks.mechanics.topk_plan`, exact ties to
  the lower ky). Run through ONNX Runtime on the CPU with the sampler's session settings (``threads``
  intra-op threads, sequential execution), so the scores are the served ones.
- ``fixed-mask`` (``mask.npy``, line scores ``(W,)`` float or a bool mask, served by the sampler's
  ``FixedMaskBundlePolicy``): the same top-k of the scores, equal scores separated by the sampler's
  centre tie-break (:func:`served_fixed_plan`); the scan's data is not read.

Axes are fastMRI's: k-space ``(..., coil, H, W)``, readout kx along H, ky (the lines chosen) along W; the
ACS block is the ``num_acs`` central columns (:func:`kadapt.kspace.preprocess.acs_block`). A plan is a
``(W,)`` bool line mask with exactly ``round(W / R)`` lines, the ACS block included.

Where the service falls back (another geometry, an untrained R, an ACS with NaN or no signal), this
module raises an :class:`~kadapt.errors.InvalidInputError` subclass naming the value instead: a
training or benchmark mask must be the model's plan, never a silent fallback. ``onnxruntime`` is imported
only when an ``mnet`` session is opened, so importing :mod:`kadapt.bundles` does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import JsonValue

from kadapt.bundles.fixed_masks import (
    ACCELERATION_RTOL,
    centre_tiebreak,
    fixed_mask_scores,
    mismatched_axes,
    served_fixed_order,
    served_fixed_plan,
)
from kadapt.bundles.manifest import MANIFEST_FILENAME, sha256_file
from kadapt.bundles.repository import Bundle, load_bundle
from kadapt.errors import (
    BundleError,
    GeometryMismatchError,
    InvalidAccelerationError,
    InvalidInputError,
    NonFiniteDataError,
)
from kadapt.kspace.preprocess import acs_block
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import topk_plan

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "SAMPLER_BUNDLE_KINDS",
    "SamplerMasks",
    "centre_tiebreak",
    "fixed_mask_scores",
    "open_sampler_session",
    "served_fixed_order",
    "served_fixed_plan",
]

#: The bundle kinds whose plans :class:`SamplerMasks` reproduces.
SAMPLER_BUNDLE_KINDS = ("mnet", "fixed-mask")
MNET_MODEL_FILE = "model.onnx"
MNET_INPUT_NAME = "acs"
MNET_OUTPUT_NAME = "scores"

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


class ScoreSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here (tests may inject another)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...


def open_sampler_session(bundle: Bundle, threads: int = 1) -> onnxruntime.InferenceSession:
    """An ORT CPU session on an ``mnet`` bundle's ``model.onnx`` with the sampler service's settings
    (``threads`` intra-op threads, one inter-op thread, sequential execution). :class:`BundleError`
    when ORT cannot load it or its I/O is not ``acs (1, C, H, num_acs, 2)`` -> ``scores``."""
    import onnxruntime  # here, not at the top: `import kadapt.bundles` must not load the runtime

    manifest = bundle.manifest
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = onnxruntime.InferenceSession(
            str(bundle.file(MNET_MODEL_FILE)), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except BundleError:
        raise
    except Exception as err:  # ORT's own exception types (InvalidProtobuf, Fail, ...) name the problem
        raise BundleError(
            f"bundle {manifest.ref}: ONNX Runtime cannot load {MNET_MODEL_FILE}: {err}"
        ) from err
    inputs = [(node.name, tuple(node.shape)) for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    geometry = manifest.geometry
    expected = (1, geometry.coils, geometry.kx, manifest.num_acs, 2)
    if inputs != [(MNET_INPUT_NAME, expected)] or MNET_OUTPUT_NAME not in outputs:
        raise BundleError(
            f"bundle {manifest.ref}: graph inputs {inputs} / outputs {outputs}, expected "
            f"{MNET_INPUT_NAME!r} {expected} -> {MNET_OUTPUT_NAME!r}"
        )
    return session


class SamplerMasks:
    """The plans of one ``mnet`` or ``fixed-mask`` bundle, as the sampler service serves them.

    ``session`` (``mnet`` only) defaults to :func:`open_sampler_session` with ``threads``. Use
    :meth:`open` for a bundle directory; :meth:`mask_for` is the one question asked per scan.
    """

    def __init__(self, bundle: Bundle, *, threads: int = 1, session: ScoreSession | None = None) -> None:
        manifest = bundle.manifest
        if manifest.kind not in SAMPLER_BUNDLE_KINDS:
            raise InvalidInputError(
                f"bundle {manifest.ref} is of kind {manifest.kind!r}, not a sampler policy "
                f"({' or '.join(SAMPLER_BUNDLE_KINDS)})"
            )
        geometry = manifest.geometry
        if manifest.kind == "mnet" and (geometry.kx is None or geometry.coils is None):
            raise BundleError(f"bundle {manifest.ref}: an mnet geometry needs kx and coils, got {geometry}")
        self.bundle = bundle
        self.kind: str = manifest.kind
        self.width: int = geometry.ky
        self.height: int | None = geometry.kx
        self.coils: int | None = geometry.coils
        self.num_acs: int = manifest.num_acs
        self.accelerations: tuple[float, ...] = tuple(manifest.accelerations)
        self._fixed_scores: FloatArray | None = None
        self._session: ScoreSession | None = None
        if self.kind == "fixed-mask":
            self._fixed_scores = fixed_mask_scores(bundle)
        else:
            self._session = session if session is not None else open_sampler_session(bundle, threads)

    @classmethod
    def open(cls, path: Path, *, threads: int = 1) -> SamplerMasks:
        """The bundle at ``path`` = ``REPOSITORY/NAME/VERSION``, loaded with every checksum verified
        (:class:`~kadapt.errors.BundleNotFoundError`, :class:`BundleError` otherwise)."""
        path = Path(path)
        return cls(load_bundle(path.parent.parent, path.parent.name, path.name), threads=threads)

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def ref(self) -> str:
        """``name/version``."""
        return self.bundle.manifest.ref

    def record(self) -> dict[str, JsonValue]:
        """What a manifest records about this policy: name, version, kind, path, sha256 of its
        ``manifest.json`` (which holds the sha256 of every other file), geometry and accelerations."""
        manifest = self.bundle.manifest
        return {
            "name": manifest.name,
            "version": manifest.version,
            "kind": manifest.kind,
            "path": str(self.bundle.path),
            "manifest_sha256": sha256_file(self.bundle.path / MANIFEST_FILENAME),
            "num_acs": manifest.num_acs,
            "accelerations": [float(r) for r in manifest.accelerations],
        }

    def check_scan(self, coils: int, height: int, width: int, num_acs: int) -> None:
        """Refuse a scan geometry this bundle does not serve: :class:`GeometryMismatchError` naming W,
        H, coils (those the manifest fixes) or, for ``mnet``, ``num_acs`` (the graph reads that block)."""
        wanted = {"W": self.width, "H": self.height, "coils": self.coils}
        given = {"W": width, "H": height, "coils": coils}
        if self.kind == "mnet":
            wanted["num_acs"], given["num_acs"] = self.num_acs, num_acs
        wrong = mismatched_axes(wanted, given)
        if wrong:
            raise GeometryMismatchError(
                f"sampler bundle {self.ref} does not serve this scan: {', '.join(wrong)}"
            )

    def check_acceleration(self, acceleration: float) -> None:
        """:class:`InvalidAccelerationError` naming R unless it is one of the manifest's accelerations."""
        if not any(np.isclose(acceleration, r, rtol=ACCELERATION_RTOL) for r in self.accelerations):
            raise InvalidAccelerationError(
                f"sampler bundle {self.ref} was trained for R in {list(self.accelerations)}, "
                f"not R={acceleration}"
            )

    def scores(self, kspace_or_acs: NDArray[Any], num_acs: int) -> FloatArray:
        """Line scores ``(W,)`` (``(B, W)`` for a batch) the plan ranks.

        ``kspace_or_acs`` is complex k-space ``([B,] C, H, W)`` -- only its ACS block is read -- or the
        ACS block itself ``([B,] C, H, num_acs)``, raw, as the scanner sends it. ``mnet``: one ONNX
        Runtime call per item; ``fixed-mask``: the bundle's scores, whatever the scan.
        """
        acs = self._acs(kspace_or_acs, num_acs)
        if self._fixed_scores is not None:
            return np.broadcast_to(self._fixed_scores, (*acs.shape[:-3], self.width)).copy()
        rows = acs.reshape(-1, *acs.shape[-3:])
        scores = np.stack([self._mnet_scores(item) for item in rows])
        out: FloatArray = scores.reshape(*acs.shape[:-3], self.width)
        return out

    def plan_from_scores(self, scores: FloatArray, acceleration: float, num_acs: int) -> BoolArray:
        """The served plan ``([B,] W)`` bool for scores of :meth:`scores` at R: ACS + top-k free lines,
        exactly ``round(W / R)`` lines (``fixed-mask``: with the sampler's centre tie-break)."""
        self.check_acceleration(acceleration)
        values = np.asarray(scores, dtype=np.float64)
        if values.shape[-1:] != (self.width,):
            raise GeometryMismatchError(f"scores of shape {values.shape} do not end in W={self.width}")
        if self.kind == "fixed-mask":
            rows = values.reshape(-1, self.width)
            plans = np.stack([served_fixed_plan(row, num_acs, acceleration) for row in rows])
            out: BoolArray = plans.reshape(values.shape)
            return out
        budget = line_budget(self.width, acceleration, num_acs)
        acquired = np.broadcast_to(acs_mask(self.width, num_acs), values.shape)
        planned: BoolArray = np.asarray(topk_plan(values, acquired, budget), dtype=np.bool_)
        return planned

    def mask_for(self, kspace_or_acs: NDArray[Any], acceleration: float, num_acs: int) -> BoolArray:
        """The line mask ``(W,)`` bool (``(B, W)`` for a batch) the sampler would serve for this scan at
        R: its ACS block kept, exactly ``line_budget(W, R, num_acs)`` lines, the rest the top-k among
        the free lines. ``kspace_or_acs`` as in :meth:`scores`.

        Raises :class:`GeometryMismatchError` (W, H, coils, ``num_acs``; an array that is neither the
        k-space nor the ACS block), :class:`InvalidAccelerationError` (an R the bundle was not trained
        for, or a budget below the ACS block), :class:`NonFiniteDataError` / :class:`InvalidInputError`
        (an ACS with NaN / Inf or no signal, where the service would serve its fallback) -- all
        :class:`InvalidInputError`.
        """
        self.check_acceleration(acceleration)
        return self.plan_from_scores(self.scores(kspace_or_acs, num_acs), acceleration, num_acs)

    def masks_for(
        self, kspace_or_acs: NDArray[Any], accelerations: Sequence[float], num_acs: int
    ) -> dict[float, BoolArray]:
        """:meth:`mask_for` at every R of ``accelerations`` from one scoring (one ORT call per item)."""
        for acceleration in accelerations:
            self.check_acceleration(acceleration)
        scores = self.scores(kspace_or_acs, num_acs)
        return {float(r): self.plan_from_scores(scores, r, num_acs) for r in accelerations}

    def _acs(self, kspace_or_acs: NDArray[Any], num_acs: int) -> NDArray[np.complex64]:
        array = np.asarray(kspace_or_acs)
        if array.ndim not in (3, 4) or not np.iscomplexobj(array):
            raise InvalidInputError(
                f"sampler bundle {self.ref} needs complex k-space ([B,] C, H, W) or its ACS block "
                f"([B,] C, H, num_acs), got {array.dtype} of shape {array.shape}"
            )
        coils, height, last = (int(size) for size in array.shape[-3:])
        if last == num_acs:
            acs = array
            width = self.width
        else:
            width = last
            acs = acs_block(array, num_acs) if width > num_acs else array
        self.check_scan(coils, height, width, num_acs)
        if acs.shape[-1] != num_acs:
            raise GeometryMismatchError(
                f"sampler bundle {self.ref}: last axis {last} is neither W={self.width} nor num_acs={num_acs}"
            )
        return np.ascontiguousarray(acs, dtype=np.complex64)

    def _mnet_scores(self, acs: NDArray[np.complex64]) -> FloatArray:
        if self._session is None:  # unreachable: mnet bundles always have a session
            raise BundleError(f"bundle {self.ref} has no ONNX session")
        # complex64 is interleaved (real, imag) float32: the graph's (..., 2) layout is a view of it.
        channels = acs.view(np.float32).reshape(*acs.shape, 2)
        if not np.isfinite(channels).all():
            raise NonFiniteDataError(f"sampler bundle {self.ref}: the ACS holds NaN or Inf")
        if not channels.any():
            raise InvalidInputError(f"sampler bundle {self.ref}: the ACS holds no signal (all zeros)")
        outputs = self._session.run([MNET_OUTPUT_NAME], {MNET_INPUT_NAME: channels[None]})
        scores = np.asarray(outputs[0], dtype=np.float64)
        if scores.shape != (1, self.width) or not np.all(np.isfinite(scores)):
            raise BundleError(
                f"bundle {self.ref}: the model returned scores of shape {scores.shape} (expected "
                f"(1, {self.width}), finite)"
            )
        row: FloatArray = scores[0]
        return row
