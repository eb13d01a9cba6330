"""Tiny cine datasets for the ``kadapt train ads`` tests, written directly in the C1 file layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from kadapt.kspace.coils import rss
from kadapt.kspace.fft import fft2c, ifft2c

FRAMES, COILS, SIZE = 4, 2, 32
NUM_ACS = 2


def _phantom(frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, H, W)`` complex: a static ellipse plus a disc whose radius beats over the frames."""
    rows, cols = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    shift = rng.uniform(-0.1, 0.1, 2)
    body = (((rows - shift[0]) / 0.8) ** 2 + ((cols - shift[1]) / 0.6) ** 2 < 1.0) * 0.5
    images = []
    for frame in range(frames):
        radius = 0.3 + 0.1 * np.sin(2 * np.pi * frame / frames)
        heart = (rows - shift[0]) ** 2 + (cols - shift[1]) ** 2 < radius**2
        images.append((body + heart) * np.exp(1j * (0.5 * rows + 0.2 * cols)))
    return np.asarray(images, dtype=np.complex64)


def _maps(coils: int, size: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    maps = np.stack(
        [np.exp(-((rows - 0.5 * np.cos(c)) ** 2 + (cols - 0.5 * np.sin(c)) ** 2)) for c in range(coils)]
    )
    maps = maps * np.exp(1j * np.arange(coils))[:, None, None]
    normalised: np.ndarray = (maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))).astype(np.complex64)
    return normalised


def write_tiny_cine(root: Path, seed: int = 0, slices: int = 1) -> Path:
    """``root/{train,val,test}/000N_tiny.h5``: one subject per split, ``slices`` slices of T = 4 frames,
    2 coils, 32 x 32, the C1 datasets (``kspace``, ``reconstruction_rss``, ``sensitivity_maps``)."""
    rng = np.random.default_rng(seed)
    maps = _maps(COILS, SIZE)
    for index, split in enumerate(("train", "val", "test")):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        kspace = []
        for _ in range(slices):
            coil_images = maps[None] * _phantom(FRAMES, SIZE, rng)[:, None]
            noise = 0.01 * (
                rng.standard_normal(coil_images.shape) + 1j * rng.standard_normal(coil_images.shape)
            )
            kspace.append(fft2c(coil_images) + noise)
        stack = np.asarray(kspace, dtype=np.complex64)
        with h5py.File(folder / f"{index:04d}_tiny.h5", "w") as file:
            file["kspace"] = stack
            file["reconstruction_rss"] = rss(ifft2c(stack), axis=2).astype(np.float32)
            file["sensitivity_maps"] = maps
            file.attrs["subject"] = f"s{index}"
            file.attrs["source"] = "tiny"
    return root
