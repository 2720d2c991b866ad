"""Procedurally generated 16 x 16 images: four tasks that convolutional and attention networks learn
well and differently (issue 26).

The ``digits`` variants differ by a rotation, a flip or a relabelling of the same images, which
ResNets and ViTs (global pooling, patch embeddings) compute almost alike. These tasks differ in what
an image is made of: a shape's outline, a grating's orientation, a noise's frequency band, a
texture's kind. Each draws 600 images per class from a seeded generator (no download), 1 channel,
roughly zero mean and unit scale, with position, size, phase and contrast varied within a class.
"""
from __future__ import annotations

import numpy as np

SIZE, PER_CLASS = 16, 600
_yy, _xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

__all__ = ["IMAGE_TASKS", "make_images"]

IMAGE_TASKS = {
    "shapes": "16x16 filled shapes (disc, square, triangle, cross) at random places, sizes and contrasts",
    "gratings": "16x16 sinusoidal gratings, class = orientation (0, 45, 90, 135 degrees), random frequency and phase",
    "bands": "16x16 noise band-passed to one of four radial frequency bands (low to high)",
    "textures": "16x16 textures: checkerboard, sparse dots, smooth blobs or white noise",
}


def _shape(rng: np.random.Generator, kind: int) -> np.ndarray:
    cy, cx = rng.uniform(5, 11, 2)
    r = rng.uniform(2.5, 5.0)
    dy, dx = _yy - cy, _xx - cx
    if kind == 0:  # disc
        mask = dy ** 2 + dx ** 2 <= r ** 2
    elif kind == 1:  # square
        mask = (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    elif kind == 2:  # triangle, apex up
        mask = (dy >= -r) & (dy <= r * 0.7) & (np.abs(dx) <= (dy + r) * 0.6)
    else:  # cross
        w = max(1.0, r / 3)
        mask = ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    return rng.uniform(0.6, 1.2) * mask.astype(np.float32)


def _grating(rng: np.random.Generator, kind: int) -> np.ndarray:
    angle = np.pi * kind / 4 + rng.normal(0, 0.05)
    freq = rng.uniform(0.12, 0.3)
    phase = rng.uniform(0, 2 * np.pi)
    return rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * freq * (np.cos(angle) * _xx + np.sin(angle) * _yy) + phase)


_BANDS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.32), (0.32, 0.5))  # radial frequency, cycles per pixel
_RADIUS = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE), indexing="ij"))


def _band(rng: np.random.Generator, kind: int) -> np.ndarray:
    lo, hi = _BANDS[kind]
    spectrum = np.fft.fft2(rng.standard_normal((SIZE, SIZE))) * ((_RADIUS > lo) & (_RADIUS <= hi))
    img = np.fft.ifft2(spectrum).real
    return img / (img.std() + 1e-8)


def _texture(rng: np.random.Generator, kind: int) -> np.ndarray:
    if kind == 0:  # checkerboard of a random period and offset
        p = rng.integers(2, 5)
        oy, ox = rng.integers(0, p, 2)
        return (((_yy + oy) // p + (_xx + ox) // p) % 2) * 2.0 - 1.0
    if kind == 1:  # sparse bright dots
        return (rng.random((SIZE, SIZE)) < rng.uniform(0.04, 0.1)) * 2.0
    if kind == 2:  # smooth blobs: a few wide Gaussians
        img = np.zeros((SIZE, SIZE), np.float32)
        for _ in range(rng.integers(2, 5)):
            cy, cx, s = *rng.uniform(0, SIZE, 2), rng.uniform(2.0, 4.0)
            img += rng.choice([-1.0, 1.0]) * np.exp(-((_yy - cy) ** 2 + (_xx - cx) ** 2) / (2 * s * s))
        return img
    return rng.standard_normal((SIZE, SIZE))


_DRAW = {"shapes": (_shape, 0.15, 11), "gratings": (_grating, 0.3, 12), "bands": (_band, 0.0, 13),
         "textures": (_texture, 0.2, 14)}


def make_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (4 * PER_CLASS, 1, 16, 16) float32, y) of task ``name`` (one of ``IMAGE_TASKS``), the same on
    every call and machine: one seeded generator per task, classes interleaved."""
    draw, noise, seed = _DRAW[name]
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(4), PER_CLASS)
    X = np.stack([draw(rng, int(k)) + noise * rng.standard_normal((SIZE, SIZE)) for k in y]).astype(np.float32)
    return X[:, None], y
