"""The reconstructions ``kadapt bench recon`` compares, behind one per-slice interface.

Each :class:`BenchMethod` maps one masked slice ``kspace (C, H, W)`` complex64 (zero off the mask), its
line mask ``(W,)`` bool and the nominal R to a magnitude ``(H, W)`` float32 on the data's scale, plus
named sub-timings (BART's ``calib_s`` / ``pics_s``). The caller times the whole call: that is the
method's seconds per slice (maps, normalisation, process launches and input preparation included).

- classic (:mod:`kadapt.classic`): ``zero-filled``, ``sense``, ``cg-sense``, ``l1-wavelet`` with the recon
  service's fixed parameters;
- ``bart-pics`` (:mod:`kadapt.classic.bart`) with ``lamda`` tuned per R on the validation split;
- learned bundles (``unet`` / ``modl`` / ``vsharp``) through the same ONNX Runtime code the recon service
  runs (:mod:`kadapt.bundles.onnx_recon`), CPU provider, warmed up before any timing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import Manifest, load_bundle
from kadapt.bundles.onnx_recon import RECON_KINDS, OnnxRecon, ScanShape, open_session, rejection, warm_up
from kadapt.classic import CLASSIC_METHODS, DEFAULT_PARAMETERS, ClassicParameters, reconstruct
from kadapt.classic.bart import bart_pics
from kadapt.errors import BundleError, InvalidInputError

BART_METHOD = "bart-pics"
CPU_PROVIDERS = ("CPUExecutionProvider",)

#: ``(kspace (C, H, W), mask (W,), R) -> (magnitude (H, W) float32, sub-timings in seconds)``
SliceReconstructor = Callable[
    [NDArray[np.complex64], NDArray[np.bool_], float], tuple[NDArray[np.float32], dict[str, float]]
]


@dataclass
class BenchMethod:
    """One compared reconstruction: ``kind`` classic / bart / learned; learned ones carry their bundle
    ``ref`` and ``manifest`` (what geometry and R they accept) and the warm-up they needed."""

    name: str
    kind: Literal["classic", "bart", "learned"]
    reconstruct: SliceReconstructor
    ref: str | None = None
    manifest: Manifest | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def rejection(self, shape: ScanShape) -> str | None:
        """Why this method cannot run on a scan of ``shape`` (only bundles refuse: geometry or R)."""
        return None if self.manifest is None else rejection(self.manifest, shape)


def classic_parameters_record(parameters: ClassicParameters, num_acs: int) -> dict[str, dict[str, Any]]:
    """The fixed parameters of ``cg-sense`` and ``l1-wavelet`` as run (for the JSON), with the coil maps
    the ``auto`` rule picks at this ``num_acs``."""
    maps = parameters.iterative_maps
    if maps == "auto":
        maps = "acs" if num_acs < parameters.espirit_min_acs else "espirit"
    return {
        "cg-sense": {"iterations": parameters.cg_iterations, "lamda": parameters.cg_lamda, "maps": maps},
        "l1-wavelet": {
            "iterations": parameters.l1_iterations,
            "lamda": parameters.l1_lamda,
            "wavelet": "db4",
            "maps": maps,
        },
    }


def classic_method(
    name: str, num_acs: int, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> BenchMethod:
    """The classic method ``name`` (a key of :data:`kadapt.classic.CLASSIC_METHODS`) on single slices."""
    if name not in CLASSIC_METHODS:
        raise InvalidInputError(f"unknown classic method {name!r}; known: {', '.join(CLASSIC_METHODS)}")

    def run(
        kspace: NDArray[np.complex64], mask: NDArray[np.bool_], acceleration: float
    ) -> tuple[NDArray[np.float32], dict[str, float]]:
        images = reconstruct(name, kspace[None, None], mask[None, None], num_acs, parameters)
        return images[0, 0], {}

    return BenchMethod(name=name, kind="classic", reconstruct=run)


def bart_method(
    num_acs: int,
    lamdas: Mapping[float, float],
    *,
    iterations: int,
    workdir: Path,
    threads: int | None,
) -> BenchMethod:
    """BART ``pics`` with ``lamdas[R]`` (tuned per R) and ``iterations``; ``.cfl`` files in ``workdir``."""

    def run(
        kspace: NDArray[np.complex64], mask: NDArray[np.bool_], acceleration: float
    ) -> tuple[NDArray[np.float32], dict[str, float]]:
        if acceleration not in lamdas:
            raise InvalidInputError(f"no tuned BART lamda for R {acceleration:g}; tuned: {sorted(lamdas)}")
        result = bart_pics(
            kspace, num_acs, lamdas[acceleration], iterations=iterations, workdir=workdir, threads=threads
        )
        return result.image, {"calib_s": result.calib_s, "pics_s": result.pics_s}

    return BenchMethod(
        name=BART_METHOD,
        kind="bart",
        reconstruct=run,
        details={"iterations": iterations, "lamda": {f"{r:g}": lamda for r, lamda in lamdas.items()}},
    )


def bundle_method(bundle_dir: Path, num_acs: int, *, threads: int | None) -> BenchMethod:
    """A learned reconstruction from the bundle at ``REPOSITORY/NAME/VERSION`` (checksums verified), run
    on ONNX Runtime's CPU provider with ``threads`` intra-op threads (None: ORT's default, all cores) and
    warmed up once. :class:`BundleError` for a bundle of another kind."""
    path = Path(bundle_dir)
    bundle = load_bundle(path.parent.parent, path.parent.name, path.name)
    manifest = bundle.manifest
    if manifest.kind not in RECON_KINDS:
        raise BundleError(
            f"bundle {manifest.ref} at {path} is of kind {manifest.kind!r}, not one of {sorted(RECON_KINDS)}"
        )
    session, providers = open_session(bundle, CPU_PROVIDERS, intra_op_threads=threads or 0)
    warmup_ms = warm_up(session, manifest)
    runtime = OnnxRecon(session, manifest)

    def run(
        kspace: NDArray[np.complex64], mask: NDArray[np.bool_], acceleration: float
    ) -> tuple[NDArray[np.float32], dict[str, float]]:
        return runtime.infer_slice(kspace, mask, num_acs), {}

    return BenchMethod(
        name=manifest.name,
        kind="learned",
        reconstruct=run,
        ref=manifest.ref,
        manifest=manifest,
        details={
            "kind": manifest.kind,
            "providers": list(providers),
            "warmup_ms": warmup_ms,
            "accelerations": list(manifest.accelerations),
            "num_acs_trained": manifest.num_acs,
            "geometry": manifest.geometry.model_dump(),
        },
    )


def name_methods(methods: list[BenchMethod], reserved: tuple[str, ...] = ()) -> list[BenchMethod]:
    """Name learned methods by their bundle name, or by ``name/version`` where the name is shared (with
    another bundle or a ``reserved`` method name), so rows stay distinct; :class:`InvalidInputError` when
    one bundle is given twice."""
    refs = [method.ref for method in methods if method.ref is not None]
    duplicates = sorted({ref for ref in refs if refs.count(ref) > 1})
    if duplicates:
        raise InvalidInputError(f"bundle(s) {duplicates} given more than once")
    names = [method.name for method in methods] + list(reserved)
    for method in methods:
        if method.ref is not None and names.count(method.name) > 1:
            method.name = method.ref
    return methods
