"""Scoring masks of one slice under a fixed reconstructor, shared by the label generators.

- reconstructors in the :class:`kadapt.nn.modl.ReconModel` convention, ``reconstruct(masked_kspace
  (K, C, H, W, 2), mask (K, 1, 1, W, 1), sens (K, C, H, W, 2)) -> image (K, H, W, 2)``:
  :class:`ZeroFilledSense` (``A^H M y`` with the ACS maps, linear in the mask) and
  :class:`ModuleReconstructor` (a trained module, no gradients);
- losses of magnitudes against the slice's RSS target (handbook science.md, ICD: "NRMSE, 1-SSIM, NMAE,
  HFEN mix"): ``nrmse`` (seed 001 eq. 8), ``ssim`` (``1 - SSIM``, fastMRI's), ``nmae``, ``hfen`` (LoG,
  sigma 1.5), or a ``{name: weight}`` mix (:class:`CandidateScorer`);
- :class:`MaskLoss`: the batched loss of candidate masks of one slice, with the linear shortcut
  ``A^H M y = sum_j m_j B_j`` (:func:`line_images`) for zero-filled SENSE;
- the identity of a dataset's slices and start masks, which enter the label settings (cache key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import ifft1c
from kadapt.kspace.torch_fft import centered_dft_matrix
from kadapt.masks import acs_lines, line_budget
from kadapt.nn.losses import SSIM_K1, SSIM_K2, SSIM_WINDOW, complex_magnitude, laplacian_of_gaussian
from kadapt.nn.physics import sense_adjoint
from kadapt.trainer.data import PreparedSlice
from kadapt.trainer.labels.store import data_fingerprint

LOSS_NAMES = ("nrmse", "ssim", "nmae", "hfen")
#: The sample-covariance factor N / (N - 1) of fastMRI's SSIM over a 7 x 7 window.
SSIM_COVARIANCE = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
Reconstructor = Callable[[Tensor, Tensor, Tensor], Tensor]
Progress = Callable[[int, int], None]


class SliceSource(Protocol):
    """What the generators read: ``slices``, the prepared training slices (a :class:`SliceDataset`)."""

    @property
    def slices(self) -> Sequence[PreparedSlice]: ...


class ZeroFilledSense:
    """The default fixed reconstructor: ``A^H M y`` with the slice's ACS maps
    (:func:`kadapt.nn.physics.sense_adjoint`): ``(K, C, H, W, 2), (K, 1, 1, W, 1), (K, C, H, W, 2) ->
    (K, H, W, 2)``. Linear in the mask, which :func:`line_images` exploits."""

    def __call__(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        return sense_adjoint(masked_kspace, sens, mask)

    @staticmethod
    def settings() -> dict[str, Any]:
        return {"name": "zero-filled-sense"}


class ModuleReconstructor:
    """A trained reconstruction module (ReconModel convention) used as ICD's fixed reconstructor:
    evaluation mode, no gradients. Shapes as :class:`ZeroFilledSense`."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        self.module.eval()
        with torch.no_grad():
            image: Tensor = self.module(masked_kspace, mask, sens)
        return image

    def settings(self) -> dict[str, Any]:
        return describe_reconstructor(self.module)


def describe_reconstructor(reconstruct: object) -> dict[str, Any]:
    """JSON description of a reconstructor for the label settings: its own ``settings()`` if it has one;
    for a module its class, parameter count and a sha256 of its weights; else its qualified name."""
    own = getattr(reconstruct, "settings", None)
    if callable(own):
        described: dict[str, Any] = own()
        return described
    if isinstance(reconstruct, nn.Module):
        digest = hashlib.sha256()
        for name, tensor in sorted(reconstruct.state_dict().items()):
            digest.update(name.encode("utf-8"))
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {
            "module": type(reconstruct).__name__,
            "parameters": sum(parameter.numel() for parameter in reconstruct.parameters()),
            "weights_sha256": digest.hexdigest(),
        }
    return {"callable": getattr(reconstruct, "__qualname__", type(reconstruct).__name__)}


def loss_weights(loss: str | Mapping[str, float]) -> dict[str, float]:
    """``"nrmse"`` -> ``{"nrmse": 1.0}``; a mapping is checked (known names, non-negative, one positive)."""
    weights = {loss: 1.0} if isinstance(loss, str) else {str(k): float(v) for k, v in loss.items()}
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown or not weights:
        raise InvalidInputError(f"ICD loss must name one of {list(LOSS_NAMES)}, got {loss!r}")
    if any(value < 0 for value in weights.values()) or not any(value > 0 for value in weights.values()):
        raise InvalidInputError(f"ICD loss weights must be >= 0 with one > 0, got {weights}")
    return weights


class CandidateScorer:
    """Weighted loss of candidate magnitudes ``(K, H, W)`` against one ``target (H, W)`` -> ``(K,)``.

    ``nrmse`` ``||p - t|| / ||t||``, ``nmae`` ``sum |p - t| / sum |t|``, ``ssim`` ``1 - SSIM``,
    ``hfen`` ``||LoG(p) - LoG(t)|| / ||LoG(t)||``. The target's own terms are computed once: ICD scores
    thousands of candidates against one target. SSIM is :func:`kadapt.nn.losses.ssim` (fastMRI's: 7 x 7
    uniform window as an average pool, K1 0.01, K2 0.03, sample covariance, valid pixels, data range the
    target maximum) with the target's local mean and variance cached -- three filters per candidate
    instead of five.
    """

    def __init__(self, weights: Mapping[str, float], target: Tensor) -> None:
        self.weights = {name: weight for name, weight in weights.items() if weight != 0}
        self.target = target
        self.target_norm = torch.linalg.norm(target)
        self.target_l1 = target.abs().sum()
        y = target[None, None]
        self.mean_y = self._window(y)
        self.var_y = SSIM_COVARIANCE * (self._window(y * y) - self.mean_y**2)
        data_range = float(target.max())
        self.c1, self.c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
        self.log_target = laplacian_of_gaussian(target.unsqueeze(0))
        self.log_norm = torch.linalg.norm(self.log_target)

    @staticmethod
    def _window(images: Tensor) -> Tensor:
        return functional.avg_pool2d(images, SSIM_WINDOW, stride=1)

    def ssim(self, prediction: Tensor) -> Tensor:
        """fastMRI SSIM of each ``prediction (K, H, W)`` against the target -> ``(K,)``."""
        x = prediction.unsqueeze(1)
        mean_x = self._window(x)
        var_x = SSIM_COVARIANCE * (self._window(x * x) - mean_x**2)
        covariance = SSIM_COVARIANCE * (self._window(x * self.target) - mean_x * self.mean_y)
        numerator = (2 * mean_x * self.mean_y + self.c1) * (2 * covariance + self.c2)
        denominator = (mean_x**2 + self.mean_y**2 + self.c1) * (var_x + self.var_y + self.c2)
        return (numerator / denominator).mean(dim=(1, 2, 3))

    def __call__(self, prediction: Tensor) -> Tensor:
        total = torch.zeros(prediction.shape[0], dtype=prediction.dtype, device=prediction.device)
        for name, weight in self.weights.items():
            if name == "nrmse":
                value = (
                    torch.linalg.vector_norm((prediction - self.target).flatten(1), dim=1) / self.target_norm
                )
            elif name == "nmae":
                value = (prediction - self.target).abs().flatten(1).sum(dim=1) / self.target_l1
            elif name == "ssim":
                value = 1.0 - self.ssim(prediction)
            else:
                error = laplacian_of_gaussian(prediction) - self.log_target
                value = torch.linalg.vector_norm(error.flatten(1), dim=1) / self.log_norm
            total = total + weight * value
        return total


def per_item_loss(weights: Mapping[str, float], prediction: Tensor, target: Tensor) -> Tensor:
    """:class:`CandidateScorer` in one call: ``prediction (K, H, W)``, ``target (H, W)`` -> ``(K,)``."""
    return CandidateScorer(weights, target)(prediction)


@dataclass(frozen=True)
class SliceProblem:
    """One slice in torch's real layout: ``kspace (C, H, W, 2)``, ``sens (C, H, W, 2)``, magnitude
    ``target (H, W)`` (the RSS ground truth)."""

    kspace: Tensor
    sens: Tensor
    target: Tensor

    @classmethod
    def from_slice(cls, item: PreparedSlice) -> SliceProblem:
        def real(array: NDArray[np.complex64]) -> Tensor:
            return torch.view_as_real(
                torch.from_numpy(np.ascontiguousarray(array, dtype=np.complex64))
            ).float()

        return cls(
            real(item.kspace), real(item.sens), torch.from_numpy(np.abs(item.target).astype(np.float32))
        )


def line_images(item: PreparedSlice) -> Tensor:
    """``B (W, H, W)`` complex64: ``B_j = sum_c conj(S_c) F^H (e_j y_c)``, the zero-filled SENSE image of
    line ``j`` alone, so that ``A^H M y = sum_j m_j B_j`` for any line mask ``m (W,)``.

    The centered 2D inverse FFT is separable: inverse along kx (H) once, then column ``j`` of the centered
    inverse DFT matrix along ky (W) spreads line ``j`` over the image columns.
    """
    along_h = torch.from_numpy(ifft1c(item.kspace, axis=-2).astype(np.complex64))  # (C, H, W_line)
    inverse = torch.from_numpy(centered_dft_matrix(item.kspace.shape[-1], inverse=True).astype(np.complex64))
    sens = torch.from_numpy(np.ascontiguousarray(item.sens, dtype=np.complex64))
    return torch.einsum("chw,chj,wj->jhw", sens.conj(), along_h, inverse)


class MaskLoss:
    """Loss of candidate masks of one slice under a fixed reconstructor, batched.

    :meth:`losses` takes any masks ``(K, W)`` bool -> ``(K,)`` float64; :meth:`move_losses` the moves of
    ICD (current mask minus one line plus each of ``adds``), using :func:`line_images` when the
    reconstructor is :class:`ZeroFilledSense`.
    """

    def __init__(
        self, item: PreparedSlice, reconstruct: Reconstructor, weights: Mapping[str, float], batch: int
    ) -> None:
        self.problem = SliceProblem.from_slice(item)
        self.reconstruct = reconstruct
        self.scorer = CandidateScorer(weights, self.problem.target)
        self.batch = batch
        self.lines = line_images(item) if isinstance(reconstruct, ZeroFilledSense) else None
        self.evaluations = 0

    def _score_images(self, magnitudes: Tensor) -> NDArray[np.float64]:
        self.evaluations += magnitudes.shape[0]
        return self.scorer(magnitudes).double().numpy()

    def losses(self, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
        """Loss of each mask ``(K, W)`` -> ``(K,)``, ``batch`` reconstructions per call."""
        out: list[NDArray[np.float64]] = []
        with torch.no_grad():
            for start in range(0, masks.shape[0], self.batch):
                chunk = torch.from_numpy(masks[start : start + self.batch].astype(np.float32))
                if self.lines is not None:
                    images = torch.einsum("kj,jhw->khw", chunk.to(torch.complex64), self.lines)
                    out.append(self._score_images(images.abs()))
                    continue
                count = chunk.shape[0]
                line_mask = chunk[:, None, None, :, None]
                # + 0.0: masked zeros carry no sign (science.md, fastMRI traps).
                masked = self.problem.kspace.unsqueeze(0) * line_mask + 0.0
                sens = self.problem.sens.unsqueeze(0).expand(count, *self.problem.sens.shape)
                image = self.reconstruct(masked, line_mask, sens)
                out.append(self._score_images(complex_magnitude(image)))
        return np.concatenate(out)

    def move_losses(
        self, current: NDArray[np.bool_], remove: int, adds: NDArray[np.intp]
    ) -> NDArray[np.float64]:
        """Loss of ``current - {remove} + {a}`` for each ``a`` in ``adds (K,)`` -> ``(K,)``."""
        if self.lines is None:
            candidates = np.repeat(current[None], adds.size, axis=0)
            candidates[:, remove] = False
            candidates[np.arange(adds.size), adds] = True
            return self.losses(candidates)
        out: list[NDArray[np.float64]] = []
        with torch.no_grad():
            kept = torch.from_numpy(np.flatnonzero(current))
            base = self.lines[kept].sum(dim=0) - self.lines[remove]
            for start in range(0, adds.size, self.batch):
                chosen = torch.from_numpy(adds[start : start + self.batch])
                out.append(self._score_images((base.unsqueeze(0) + self.lines[chosen]).abs()))
        return np.concatenate(out)


def check_start_masks(
    masks: NDArray[Any], count: int, width: int, acceleration: float, num_acs: int
) -> NDArray[np.bool_]:
    """``masks`` as bool ``(count, W)``, each exactly ``line_budget`` lines with the ACS block; else
    InvalidInputError naming the first bad row."""
    array = np.asarray(masks)
    if array.shape != (count, width):
        raise InvalidInputError(f"start masks must have shape ({count}, {width}), got {array.shape}")
    array = array.astype(np.bool_)
    budget = line_budget(width, acceleration, num_acs)
    lines = array.sum(axis=1)
    acs = acs_lines(width, num_acs)
    bad = np.flatnonzero((lines != budget) | ~array[:, acs].all(axis=1))
    if bad.size:
        raise InvalidInputError(
            f"start mask {int(bad[0])} holds {int(lines[bad[0]])} lines (budget {budget}) or misses "
            f"the ACS block {acs.tolist()}"
        )
    return array


def start_description(start_masks: NDArray[np.bool_] | None) -> str:
    """``"vd-random"`` (drawn from the generator) or ``"given:<sha256 of the (N, W) masks>"``."""
    if start_masks is None:
        return "vd-random"
    packed = np.packbits(np.asarray(start_masks, dtype=np.bool_), axis=-1)
    return f"given:{hashlib.sha256(str(np.shape(start_masks)).encode() + packed.tobytes()).hexdigest()}"


def slice_identity(
    dataset: SliceSource, *, fingerprint: bool = True
) -> tuple[tuple[str, ...], NDArray[np.int64], int, str]:
    """``(volumes (N,), slices (N,), W, fingerprint)`` of the dataset's slices (InvalidInputError when
    empty); the fingerprint (:func:`kadapt.trainer.labels.store.data_fingerprint`, a hash over all the
    k-space) is ``""`` unless asked for."""
    items = list(dataset.slices)
    if not items:
        raise InvalidInputError("the label dataset has no slices")
    volumes = tuple(item.volume for item in items)
    slices = np.asarray([item.slice_index for item in items], dtype=np.int64)
    digest = data_fingerprint(volumes, slices, [item.kspace for item in items]) if fingerprint else ""
    return volumes, slices, int(items[0].kspace.shape[-1]), digest


__all__ = [
    "LOSS_NAMES",
    "CandidateScorer",
    "MaskLoss",
    "ModuleReconstructor",
    "Progress",
    "Reconstructor",
    "SliceProblem",
    "SliceSource",
    "ZeroFilledSense",
    "check_start_masks",
    "describe_reconstructor",
    "line_images",
    "loss_weights",
    "per_item_loss",
    "slice_identity",
    "start_description",
]
