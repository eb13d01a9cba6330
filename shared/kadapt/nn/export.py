"""Export a model to ONNX (dynamo exporter) or TorchScript and prove the file computes what torch does.

A bundle is exported for one geometry: shapes are static (the example inputs' shapes), which is what the
manifest's ``geometry`` and ``inputs`` / ``outputs`` record. Every export is followed by a parity check of
the *written file* (ONNX Runtime session / ``torch.jit.load``) against the eager model on the example
inputs and on fresh random inputs of the same shapes; the worst relative L2 error
``||file - torch|| / ||torch||`` goes into the :class:`ExportReport` (and from there into the manifest's
validation metrics), and an export above ``tolerance`` raises :class:`kadapt.errors.BundleError`.

ONNX goes through ``torch.onnx.export(..., dynamo=True)`` inside
:func:`kadapt.kspace.torch_fft.dfts_as_matmuls`: the FFTs become GEMMs with constant DFT matrices (ONNX
Runtime's ``DFT`` kernel is slow on CPU). This module imports onnxruntime; the
recon service and the trainer import it, the gateway never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from kadapt.bundles.manifest import TensorSpec, sha256_file
from kadapt.errors import BundleError, InvalidInputError
from kadapt.kspace.torch_fft import dfts_as_matmuls

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportReport",
    "RandomInputs",
    "check_parity",
    "export_onnx",
    "export_torchscript",
    "random_like_inputs",
    "relative_l2_error",
    "verify_onnx",
    "verify_torchscript",
]

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
TORCHSCRIPT_RUNTIME = "torch.jit"

RandomInputs = Callable[[torch.Generator], tuple[Tensor, ...]]
"""Makes one fresh set of model inputs (same shapes and dtypes as the example) from a generator."""


@dataclass(frozen=True)
class ExportReport:
    """What an export produced, in the terms a bundle manifest needs.

    ``inputs`` / ``outputs`` are :class:`kadapt.bundles.TensorSpec` (name, static shape, numpy dtype name);
    ``opset`` is ``None`` for TorchScript; ``providers`` the ONNX Runtime providers the parity session
    actually used (``("torch.jit",)`` for TorchScript); ``max_relative_l2`` the worst relative L2 error
    over ``checked_inputs`` input sets and every output.
    """

    path: Path
    format: Literal["onnx", "torchscript"]
    sha256: str
    opset: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_relative_l2: float
    providers: tuple[str, ...]
    checked_inputs: int


def relative_l2_error(reference: NDArray[np.generic], candidate: NDArray[np.generic]) -> float:
    """``||candidate - reference|| / ||reference||`` over all elements (float64); arrays of one shape.

    Falls back to the absolute error when the reference is all zeros; NaN/Inf anywhere gives ``inf``.
    """
    if reference.shape != candidate.shape:
        raise BundleError(f"parity: output shape {candidate.shape} differs from torch's {reference.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cand))):
        return float("inf")
    scale = float(np.linalg.norm(ref))
    error = float(np.linalg.norm(cand - ref))
    return error / scale if scale > 0.0 else error


def check_parity(max_relative_l2: float, tolerance: float, *, what: str) -> None:
    """Raise :class:`BundleError` naming both numbers when ``max_relative_l2 > tolerance`` (or not finite)."""
    if not np.isfinite(max_relative_l2) or max_relative_l2 > tolerance:
        raise BundleError(
            f"{what}: parity against PyTorch failed, max relative L2 error {max_relative_l2:.3e} "
            f"> tolerance {tolerance:.3e}",
            max_relative_l2=max_relative_l2,
            tolerance=tolerance,
        )


def random_like_inputs(example_inputs: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
    """Fresh inputs shaped and typed like ``example_inputs`` (any shapes).

    An example that holds only 0s and 1s (a sampling mask) gets random 0/1 values with the same fraction
    of ones; any other floating input gets standard normal values scaled by the example's standard
    deviation, so operators such as MoDL's CG stay as well conditioned as on real data.
    """
    fresh: list[Tensor] = []
    for example in example_inputs:
        if not example.is_floating_point():
            raise InvalidInputError(f"random_like_inputs needs floating inputs, got dtype {example.dtype}")
        uniform = torch.rand(example.shape, generator=generator, dtype=example.dtype)
        is_binary = bool(torch.all((example == 0) | (example == 1)))
        if is_binary:
            fresh.append((uniform < example.mean()).to(example.dtype))
        else:
            std = float(example.std()) if example.numel() > 1 else 1.0
            noise = torch.randn(example.shape, generator=generator, dtype=example.dtype)
            fresh.append(noise * (std if std > 0.0 else 1.0))
    return tuple(fresh)


@contextmanager
def _quiet_torch_export() -> Iterator[None]:
    # pytest runs with warnings as errors; silence only the known messages torch's own exporters emit.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
        )
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        # torch.jit.trace flags the shape checks at our edges and the U-Net's odd-size padding (shapes
        # read as Python booleans / integers); a trace is per geometry by design.
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python (boolean|integer)")
        yield


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_outputs(result: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (result,) if isinstance(result, Tensor) else tuple(result)


def _torch_outputs(
    model: Callable[..., Tensor | Sequence[Tensor]], inputs: tuple[Tensor, ...]
) -> list[NDArray[np.generic]]:
    with torch.no_grad():
        return [output.detach().cpu().numpy() for output in _as_outputs(model(*inputs))]


def _specs(names: Sequence[str], tensors: Sequence[Tensor], kind: str) -> tuple[TensorSpec, ...]:
    if len(names) != len(tensors):
        raise InvalidInputError(f"{len(names)} {kind} names {list(names)} for {len(tensors)} {kind}s")
    return tuple(
        TensorSpec(
            name=name,
            shape=tuple(int(size) for size in tensor.shape),
            dtype=str(tensor.numpy(force=True).dtype),
        )
        for name, tensor in zip(names, tensors, strict=True)
    )


def _input_sets(
    example_inputs: tuple[Tensor, ...],
    random_checks: int,
    random_inputs: RandomInputs | None,
    generator: torch.Generator | None,
) -> list[tuple[Tensor, ...]]:
    if random_checks < 0:
        raise InvalidInputError(f"random_checks must be >= 0, got {random_checks}")
    # A local, fixed-seed generator when none is given: deterministic, and no global seeding.
    rng = generator if generator is not None else torch.Generator().manual_seed(0)
    make = random_inputs if random_inputs is not None else (lambda g: random_like_inputs(example_inputs, g))
    sets = [example_inputs]
    for _ in range(random_checks):
        fresh = make(rng)
        shapes = [tuple(t.shape) for t in fresh]
        if shapes != [tuple(t.shape) for t in example_inputs]:
            raise InvalidInputError(f"random_inputs gave shapes {shapes}, the example inputs differ")
        sets.append(fresh)
    return sets


def verify_onnx(
    path: Path,
    model: nn.Module,
    input_sets: Sequence[tuple[Tensor, ...]],
    *,
    input_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> tuple[float, tuple[str, ...]]:
    """Run the ONNX file at ``path`` in ONNX Runtime on every input set (tensors of any shapes, in
    ``input_names`` order) and compare with ``model``; returns ``(max relative L2, providers used)``.

    Raises :class:`BundleError` above ``tolerance`` or when the file's inputs differ from ``input_names``.
    """
    session = onnxruntime.InferenceSession(str(path), providers=list(providers))
    session_inputs = [node.name for node in session.get_inputs()]
    unknown = sorted(set(session_inputs) - set(input_names))
    if unknown:
        raise BundleError(f"{path}: ONNX inputs {unknown} are not among {list(input_names)}")
    worst = 0.0
    with _eval_mode(model):
        for inputs in input_sets:
            feeds = {
                name: tensor.numpy(force=True)
                for name, tensor in zip(input_names, inputs, strict=True)
                if name in session_inputs
            }
            candidates = session.run(None, feeds)
            references = _torch_outputs(model, inputs)
            if len(candidates) != len(references):
                raise BundleError(f"{path}: {len(candidates)} ONNX outputs, torch gives {len(references)}")
            for reference, candidate in zip(references, candidates, strict=True):
                worst = max(worst, relative_l2_error(reference, np.asarray(candidate)))
    check_parity(worst, tolerance, what=str(path))
    return worst, tuple(session.get_providers())


def verify_torchscript(
    path: Path,
    model: nn.Module,
    input_sets: Sequence[tuple[Tensor, ...]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Load the TorchScript file at ``path`` (CPU) and compare with ``model`` on every input set;
    returns the max relative L2 error, raises :class:`BundleError` above ``tolerance``."""
    loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    worst = 0.0
    with _eval_mode(model):
        for inputs in input_sets:
            candidates = _torch_outputs(loaded, inputs)
            references = _torch_outputs(model, inputs)
            if len(candidates) != len(references):
                raise BundleError(
                    f"{path}: {len(candidates)} TorchScript outputs, torch gives {len(references)}"
                )
            for reference, candidate in zip(references, candidates, strict=True):
                worst = max(worst, relative_l2_error(reference, candidate))
    check_parity(worst, tolerance, what=str(path))
    return worst


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    random_checks: int = 1,
    random_inputs: RandomInputs | None = None,
    generator: torch.Generator | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ExportReport:
    """Export ``model`` (eval mode) to one self-contained ONNX file at ``path`` and check its parity.

    ``example_inputs`` are CPU tensors of the bundle's geometry (e.g. MoDL: ``(B, C, H, W, 2)``,
    ``(B, 1, 1, W, 1)``, ``(B, C, H, W, 2)``); the graph has these static shapes. Parity runs on them and
    on ``random_checks`` fresh sets from ``random_inputs`` (default :func:`random_like_inputs`) drawn with
    ``generator``. Returns an :class:`ExportReport`; raises :class:`BundleError` above ``tolerance``.
    """
    path = Path(path)
    with _eval_mode(model):
        with torch.no_grad():
            outputs = _as_outputs(model(*example_inputs))
        input_specs = _specs(input_names, example_inputs, "input")
        output_specs = _specs(output_names, outputs, "output")
        with _quiet_torch_export(), dfts_as_matmuls():
            torch.onnx.export(
                model,
                example_inputs,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    input_sets = _input_sets(example_inputs, random_checks, random_inputs, generator)
    worst, used = verify_onnx(
        path, model, input_sets, input_names=input_names, tolerance=tolerance, providers=providers
    )
    return ExportReport(
        path=path,
        format="onnx",
        sha256=sha256_file(path),
        opset=opset,
        inputs=input_specs,
        outputs=output_specs,
        max_relative_l2=worst,
        providers=used,
        checked_inputs=len(input_sets),
    )


def export_torchscript(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    random_checks: int = 1,
    random_inputs: RandomInputs | None = None,
    generator: torch.Generator | None = None,
) -> ExportReport:
    """Trace ``model`` (eval mode) with ``torch.jit.trace`` on ``example_inputs``, save it at ``path``,
    reload the file and check parity as :func:`export_onnx` does. Shapes are those of the example inputs
    (a trace fixes every shape check and loop count); names are recorded for the manifest only."""
    path = Path(path)
    with _eval_mode(model), torch.no_grad():
        outputs = _as_outputs(model(*example_inputs))
        input_specs = _specs(input_names, example_inputs, "input")
        output_specs = _specs(output_names, outputs, "output")
        with _quiet_torch_export():
            traced = torch.jit.trace(model, example_inputs, check_trace=False)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(path))
    input_sets = _input_sets(example_inputs, random_checks, random_inputs, generator)
    with _quiet_torch_export():
        worst = verify_torchscript(path, model, input_sets, tolerance=tolerance)
    return ExportReport(
        path=path,
        format="torchscript",
        sha256=sha256_file(path),
        opset=None,
        inputs=input_specs,
        outputs=output_specs,
        max_relative_l2=worst,
        providers=(TORCHSCRIPT_RUNTIME,),
        checked_inputs=len(input_sets),
    )
