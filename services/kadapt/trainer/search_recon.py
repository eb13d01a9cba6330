"""Search reconstructions for greedy line selection: every free candidate line of one slice scored at once.

Greedy forward selection (seed 000 section 1.4, the [GML+18] approach to its problem (4)) adds, step by
step, the line whose reconstruction is best; each step reconstructs the slice once per free candidate
(about 110 at W = 128), so the reconstruction inside the search must be batched over candidates. A
:class:`SliceSearch` holds one slice's state (its current mask) and returns, for candidate lines ``k``, the
mean squared error of the magnitude reconstruction with ``mask | {k}`` against the slice's RSS reference
(original intensity units), and accepts the chosen line.

- :class:`CgSenseSearch` (``cg-sense``): exactly :func:`kadapt.classic.cg_sense` -- the same ACS
  normalisation, coil maps (:func:`kadapt.classic.iterative_coil_maps`), Tikhonov weight ``cg_lamda`` and
  ``cg_iterations`` conjugate-gradient steps from zero (the recursion of
  :func:`kadapt.nn.physics.conjugate_gradient`) -- for all candidates in one batch. A line mask acts on
  ky only, so after an inverse FFT along the readout the SENSE normal operator splits into one ``W x W``
  Gram matrix per image row ``x`` (seed 001 eq. 5)::

      G_x(m) = sum_{k in m} sum_c u_xkc u_xkc^H,   u_xkc = conj(S_c[x, :]) * f_k,   f_k = F_y^H e_k

  and adding line ``k`` adds the rank-``C`` term ``sum_c u_xkc u_xkc^H``. One CG step for every candidate
  is then a batched matrix product with the current ``G_x`` plus the rank-``C`` correction; rows and
  pixels outside the coil maps' support (zero maps) stay exactly zero and are left out (rows grouped into
  buckets of similar support length). Cost per greedy step: ``cg_iterations`` batched products of
  ``K x L x L`` per row (K candidates, L support pixels): about 15 CPU-seconds for the 24 picks of one
  128 x 128 x 8-coil slice at R 4 on one core.
- :class:`SenseSearch` (``sense``): the zero-filled SENSE combination, linear in the acquired lines: each
  line's image contribution is precomputed, so a candidate costs one addition.
- :class:`ReconSearch` (``same``): any slice reconstruction (the benchmark's own), one candidate at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.classic import DEFAULT_PARAMETERS, ClassicParameters, iterative_coil_maps
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.fft import ifft1c
from kadapt.kspace.preprocess import acs_scale
from kadapt.masks import acs_mask

__all__ = ["CgSenseSearch", "ReconSearch", "SenseSearch", "SliceSearch", "centred_inverse_dft"]

#: Complex elements per candidate batch (rows x candidates x support) before candidates are chunked.
CHUNK_ELEMENTS = 1 << 22
#: Rows are grouped by support length rounded up to this many pixels (one batched product per group).
BUCKET_STEP = 16
_SENSE_EPS = 1e-12

#: ``(kspace (C, H, W) zero off the mask, mask (W,), R) -> magnitude (H, W)``
SliceRecon = Callable[[NDArray[np.complex64], NDArray[np.bool_], float], NDArray[np.float32]]


class SliceSearch(Protocol):
    """One slice's forward-selection state: ``mask (W,)`` (starts as the ACS block), ``peak`` the
    reference's maximum (the PSNR data range)."""

    mask: NDArray[np.bool_]
    peak: float

    def candidate_errors(self, candidates: NDArray[np.intp]) -> NDArray[np.float64]:
        """MSE against the reference of the reconstruction with ``mask | {k}``, for each ``k`` of
        ``candidates (K,)`` (free lines) -> ``(K,)``."""
        ...

    def accept(self, line: int) -> None:
        """Add ``line`` to ``mask``."""
        ...


def centred_inverse_dft(width: int) -> NDArray[np.complex128]:
    """``F^H (W, W)``, the centred orthonormal inverse DFT along ky: column ``k`` is ``f_k = F^H e_k``."""
    identity = np.eye(width, dtype=np.complex128)
    return np.asarray(ifft1c(identity, axis=0), dtype=np.complex128)


@dataclass
class _CandidateState:
    """CG vectors of one bucket for K candidates, ``(n, K, L)`` complex64 each; ``waves`` ``f_k`` at the
    bucket's positions, ``sens`` / ``sens_h`` its maps ``(n, L, C)`` / conjugate transpose ``(n, C, L)``,
    ``gram_t`` the transposed Gram matrices ``(n, L, L)`` (``G^T = conj(G)``: rows times ``G^T``)."""

    waves: torch.Tensor
    waves_conj: torch.Tensor
    sens: torch.Tensor
    sens_h: torch.Tensor
    gram_t: torch.Tensor
    solution: torch.Tensor
    residual: torch.Tensor
    direction: torch.Tensor
    product: torch.Tensor
    scratch: torch.Tensor
    coil_scratch: torch.Tensor

    @classmethod
    def start(cls, bucket: _Bucket, waves: torch.Tensor, data: torch.Tensor) -> _CandidateState:
        """x0 = 0 and residual = direction = ``A^H y`` of ``mask | {k}``: the bucket's right-hand side
        plus ``sum_c u_xkc Y_c(x, k)``, for ``waves (n, K, L)`` and ``data`` ``Y_c(x, k)`` ``(n, K, C)``."""
        sens_h = bucket.sens.conj().transpose(1, 2).contiguous()
        residual = bucket.rhs[:, None, :] + waves * (data @ sens_h)
        return cls(
            waves=waves,
            waves_conj=waves.conj().resolve_conj(),
            sens=bucket.sens,
            sens_h=sens_h,
            gram_t=bucket.gram.conj().resolve_conj(),
            solution=torch.zeros_like(residual),
            residual=residual,
            direction=residual.clone(),
            product=torch.empty_like(residual),
            scratch=torch.empty_like(residual),
            coil_scratch=torch.empty((*waves.shape[:2], bucket.sens.shape[-1]), dtype=waves.dtype),
        )

    def apply_normal(self, lamda: float) -> None:
        """``product = (G_x + sum_c u_xkc u_xkc^H + lamda) direction`` for every row and candidate."""
        torch.bmm(self.direction, self.gram_t, out=self.product)
        torch.mul(self.direction, self.waves_conj, out=self.scratch)
        torch.bmm(self.scratch, self.sens, out=self.coil_scratch)  # u_xkc^H p
        torch.bmm(self.coil_scratch, self.sens_h, out=self.scratch)
        self.product.addcmul_(self.waves, self.scratch)
        self.product.add_(self.direction, alpha=lamda)


def _dot(states: list[_CandidateState], left: str, right: str) -> torch.Tensor:
    """Real part of the inner product per candidate ``(K,)`` over every bucket (torch sums pairwise)."""
    total = torch.zeros(states[0].residual.shape[1], dtype=torch.float64) if states else torch.zeros(0)
    for state in states:
        products = torch.view_as_real(state.scratch)  # free between normal-operator applications
        torch.mul(
            torch.view_as_real(getattr(state, left)), torch.view_as_real(getattr(state, right)), out=products
        )
        total += products.sum(dim=(0, 2, 3)).double()
    return total


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """``numerator / denominator`` with 0 where ``|denominator| <= eps`` (a converged candidate stays put),
    as complex64 for the in-place updates."""
    usable = denominator.abs() > eps
    safe = torch.where(usable, denominator, torch.ones_like(denominator))
    return torch.where(usable, numerator / safe, torch.zeros_like(numerator)).to(torch.complex64)


@dataclass
class _Bucket:
    """Image rows ``rows (n,)`` with support positions ``positions (n, L)`` (padding: position 0 with zero
    maps), maps ``sens (n, L, C)``, Gram matrices ``gram (n, L, L)`` and right-hand side ``rhs (n, L)``."""

    rows: torch.Tensor
    positions: torch.Tensor
    sens: torch.Tensor
    gram: torch.Tensor
    rhs: torch.Tensor
    offset: int

    @property
    def size(self) -> int:
        return int(self.positions.numel())


class CgSenseSearch:
    """Batched CG-SENSE candidate scoring of one slice (see the module docstring); ``kspace (C, H, W)``
    fully sampled, ``reference (H, W)`` its RSS. Solves what :func:`kadapt.classic.cg_sense` solves."""

    def __init__(
        self,
        kspace: NDArray[np.complex64],
        reference: NDArray[np.float32],
        num_acs: int,
        parameters: ClassicParameters = DEFAULT_PARAMETERS,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        _coils, height, width = kspace.shape
        self.scale = acs_scale(kspace, num_acs)
        normalised = (kspace / np.float32(self.scale)).astype(np.complex64)
        maps = iterative_coil_maps(normalised, num_acs, parameters.iterative_maps, parameters)
        self.lamda = parameters.cg_lamda
        self.iterations = parameters.cg_iterations
        self.chunk_elements = chunk_elements
        self.shape = (height, width)
        self.reference = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)).reshape(-1)
        self.peak = float(reference.max())
        self.mask = acs_mask(width, num_acs)
        self.fourier = torch.from_numpy(centred_inverse_dft(width).astype(np.complex64))  # (w, k)
        hybrid = torch.from_numpy(ifft1c(normalised, axis=-2).astype(np.complex64))  # (C, x, ky)
        self.hybrid = hybrid.permute(1, 2, 0).contiguous()  # (x, ky, C)
        sens = torch.from_numpy(maps.astype(np.complex64)).permute(1, 2, 0)  # (x, w, C)
        circulant = self._circulant(self.mask)
        projected = torch.einsum("xkc,wk->xwc", self.hybrid * torch.from_numpy(self.mask)[None, :, None],
                                 self.fourier)  # fmt: skip
        rhs_full = (sens.conj() * projected).sum(dim=-1)  # A^H y per row (x, w)
        self.buckets = self._buckets(sens, circulant, rhs_full)
        self.unknowns = sum(bucket.size for bucket in self.buckets)

    def _circulant(self, mask: NDArray[np.bool_]) -> torch.Tensor:
        lines = self.fourier[:, torch.from_numpy(mask)]
        return lines @ lines.conj().T  # F^H diag(m) F, (W, W)

    def _buckets(self, sens: torch.Tensor, circulant: torch.Tensor, rhs: torch.Tensor) -> list[_Bucket]:
        support = (sens.abs() ** 2).sum(dim=-1) > 0  # (x, w)
        lengths = support.sum(dim=1)
        keys = torch.clamp((lengths + BUCKET_STEP - 1) // BUCKET_STEP * BUCKET_STEP, max=self.shape[1])
        buckets, offset = [], 0
        for key in sorted({int(k) for k, n in zip(keys, lengths, strict=True) if n > 0}):
            rows = torch.nonzero((keys == key) & (lengths > 0)).flatten()
            positions = torch.zeros((rows.numel(), key), dtype=torch.long)
            valid = torch.zeros((rows.numel(), key), dtype=torch.bool)
            for index, row in enumerate(rows.tolist()):
                where = torch.nonzero(support[row]).flatten()
                positions[index, : where.numel()] = where
                valid[index, : where.numel()] = True
            gathered = sens[rows[:, None], positions] * valid[..., None]  # (n, L, C)
            self_products = gathered.conj() @ gathered.transpose(1, 2)  # sum_c conj(S_l) S_l'
            gram = self_products * circulant[positions[:, :, None], positions[:, None, :]]
            bucket_rhs = rhs[rows[:, None], positions] * valid
            buckets.append(_Bucket(rows, positions, gathered, gram, bucket_rhs, offset))
            offset += rows.numel() * key
        return buckets

    def _line_terms(self, bucket: _Bucket, lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_k`` at the bucket's positions ``(n, K, L)`` and the data ``Y_c(x, k)`` ``(n, K, C)``."""
        waves = self.fourier[:, lines][bucket.positions].transpose(1, 2).contiguous()  # (n, K, L)
        data = self.hybrid[bucket.rows][:, lines]  # (n, K, C)
        return waves, data

    def candidate_images(self, candidates: NDArray[np.intp]) -> torch.Tensor:
        """Magnitude images ``(K, H * W)`` float32 (original units) with ``mask | {k}`` per candidate."""
        chunk = max(1, self.chunk_elements // max(self.unknowns, 1))
        parts = [
            self._solve(torch.from_numpy(candidates[i : i + chunk])) for i in range(0, len(candidates), chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros((0, self.reference.numel()))

    def candidate_errors(self, candidates: NDArray[np.intp]) -> NDArray[np.float64]:
        images = self.candidate_images(candidates)
        errors: NDArray[np.float64] = ((images - self.reference) ** 2).mean(dim=1).double().numpy()
        return errors

    def _solve(self, lines: torch.Tensor) -> torch.Tensor:
        """CG-SENSE for every candidate line of ``lines (K,)`` -> magnitudes ``(K, H * W)``.

        The CG recursion is :func:`kadapt.nn.physics.conjugate_gradient`'s (x0 = 0, real part of the
        inner products summed over the whole image, zero step where a denominator vanishes) written on
        the bucketed ``(n, K, L)`` layout with preallocated, in-place updates: on the generic
        ``(B, H, W, 2)`` layout, fresh tensors and layout copies took as long as the products themselves
        (measured: 3.6 s instead of about 1 s for 120 candidates of a 128 x 128 x 8 slice)."""
        count = lines.numel()
        states = [_CandidateState.start(bucket, *self._line_terms(bucket, lines)) for bucket in self.buckets]
        residual_norm = _dot(states, "residual", "residual")
        for _ in range(self.iterations):
            for state in states:
                state.apply_normal(self.lamda)
            alpha = _ratio(residual_norm, _dot(states, "direction", "product"))[None, :, None]
            for state in states:
                state.solution.addcmul_(state.direction, alpha)
                state.residual.addcmul_(state.product, -alpha)
            new_norm = _dot(states, "residual", "residual")
            beta = _ratio(new_norm, residual_norm)[None, :, None]
            for state in states:
                state.direction.mul_(beta).add_(state.residual)
            residual_norm = new_norm
        images = torch.zeros((count, self.reference.numel()), dtype=torch.float32)
        for bucket, state in zip(self.buckets, states, strict=True):
            pixels = (bucket.rows[:, None] * self.shape[1] + bucket.positions).reshape(-1)
            values = state.solution.abs().transpose(0, 1).reshape(count, -1) * self.scale
            valid = (bucket.sens.abs().sum(dim=-1) > 0).reshape(-1)
            images[:, pixels[valid]] = values[:, valid]
        return images

    def accept(self, line: int) -> None:
        lines = torch.tensor([line])
        for bucket in self.buckets:
            waves, data = self._line_terms(bucket, lines)  # (n, 1, L), (n, 1, C)
            vectors = bucket.sens.conj() * waves.transpose(1, 2)  # u_xkc (n, L, C)
            bucket.gram += vectors @ vectors.conj().transpose(1, 2)
            bucket.rhs += (vectors @ data.transpose(1, 2))[..., 0]
        self.mask[line] = True


class SenseSearch:
    """Zero-filled SENSE combination (as :func:`kadapt.classic.sense`) of one slice: ``kspace (C, H, W)``
    fully sampled, ``reference (H, W)``. The image is linear in the lines: ``x = sum_k v_k`` with
    ``v_k = f_k * sum_c conj(S_c) Y_c(., k) / sum_c |S_c|^2``, stored for every line ``(W, H, W)``."""

    def __init__(self, kspace: NDArray[np.complex64], reference: NDArray[np.float32], num_acs: int) -> None:
        width = kspace.shape[-1]
        maps = torch.from_numpy(acs_sensitivities(kspace, num_acs))  # (C, x, w)
        hybrid = torch.from_numpy(ifft1c(kspace, axis=-2).astype(np.complex64))  # (C, x, ky)
        fourier = torch.from_numpy(centred_inverse_dft(width).astype(np.complex64))  # (w, k)
        weight = 1.0 / torch.clamp((maps.abs() ** 2).sum(dim=0), min=_SENSE_EPS)  # (x, w)
        combined = torch.einsum("cxw,cxk->kxw", maps.conj(), hybrid)
        self.lines = combined * fourier.T[:, None, :] * weight[None]  # (k, x, w)
        self.mask = acs_mask(width, num_acs)
        self.image = self.lines[torch.from_numpy(self.mask)].sum(dim=0)
        self.reference = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
        self.peak = float(reference.max())

    def candidate_errors(self, candidates: NDArray[np.intp]) -> NDArray[np.float64]:
        images = (self.image[None] + self.lines[torch.from_numpy(candidates)]).abs()
        errors: NDArray[np.float64] = ((images - self.reference) ** 2).mean(dim=(1, 2)).double().numpy()
        return errors

    def accept(self, line: int) -> None:
        self.image = self.image + self.lines[line]
        self.mask[line] = True


class ReconSearch:
    """Any slice reconstruction ``recon`` (e.g. the benchmark's), run once per candidate: slow, for small
    runs. ``kspace (C, H, W)`` fully sampled, ``reference (H, W)``, ``acceleration`` passed to ``recon``."""

    def __init__(
        self,
        kspace: NDArray[np.complex64],
        reference: NDArray[np.float32],
        num_acs: int,
        recon: SliceRecon,
        acceleration: float,
    ) -> None:
        self.kspace = kspace
        self.reference = reference.astype(np.float64)
        self.peak = float(reference.max())
        self.recon = recon
        self.acceleration = acceleration
        self.mask = acs_mask(kspace.shape[-1], num_acs)

    def candidate_errors(self, candidates: NDArray[np.intp]) -> NDArray[np.float64]:
        errors = np.empty(len(candidates), dtype=np.float64)
        for index, line in enumerate(candidates):
            mask = self.mask.copy()
            mask[line] = True
            sample = np.where(mask[None, None, :], self.kspace, 0).astype(np.complex64)
            image = self.recon(sample, mask, self.acceleration)
            errors[index] = float(np.mean((image.astype(np.float64) - self.reference) ** 2))
        return errors

    def accept(self, line: int) -> None:
        self.mask[line] = True
