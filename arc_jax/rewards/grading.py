"""Grading predicted grids against expected ones: pixel score, partition grades, fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
from scipy import signal


def pixel_score(expected: np.ndarray, predicted: np.ndarray | None) -> float:
    """Similarity in [0, 1] of a predicted grid to the expected one (1 iff equal).

    Same shape: the fraction of equal cells. Different shapes: `predicted` is slid over
    `expected` at every offset where the two overlap; the best number of matching cells is
    divided by the area of the bounding box, max(heights) * max(widths). A missing
    prediction (None) scores 0.
    """
    if predicted is None:
        return 0.0
    expected, predicted = _as_grid(expected, "expected"), _as_grid(predicted, "predicted")
    if expected.shape == predicted.shape:
        return float(np.mean(expected == predicted))
    best = int(_matches_per_offset(expected, predicted).max())
    area = max(expected.shape[0], predicted.shape[0]) * max(expected.shape[1], predicted.shape[1])
    return best / area


def _as_grid(grid: np.ndarray, name: str) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{name} grid must be a non-empty 2-D array, got shape {grid.shape}")
    return grid


def _matches_per_offset(expected: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Number of equal cells for every relative offset at which the grids overlap.

    expected: [h1, w1], predicted: [h2, w2] -> [h1 + h2 - 1, w1 + w2 - 1].
    For each colour, the cross-correlation of the two "cell == colour" masks counts, per
    offset, the cells where both grids hold that colour; the sum over colours counts the
    matches. The correlation uses FFTs; rounding makes it exact, as the float64 error on
    counts of grid size is far below 0.5.
    """
    colours = np.intersect1d(expected, predicted)  # [c]
    expected_masks = (expected[None] == colours[:, None, None]).astype(np.float64)  # [c, h1, w1]
    predicted_masks = (predicted[None] == colours[:, None, None]).astype(np.float64)  # [c, h2, w2]
    # Correlation is convolution with the second argument flipped in both axes.
    per_colour = signal.fftconvolve(expected_masks, predicted_masks[:, ::-1, ::-1], mode="full", axes=(1, 2))
    return np.rint(per_colour.sum(axis=0)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PartitionGrade:
    """Pixel scores of the grids of one partition (train or test) of one prediction.

    A grid is correct iff its pixel score is exactly 1, which happens iff it equals the
    expected grid (differently shaped grids score below 1).
    """

    pixel_scores: tuple[float, ...]  # one per grid, in partition order

    @property
    def num_grids(self) -> int:
        return len(self.pixel_scores)

    @property
    def num_correct(self) -> int:
        return sum(score == 1.0 for score in self.pixel_scores)

    @property
    def pixel_score(self) -> float:
        return sum(self.pixel_scores) / self.num_grids

    @property
    def correct_grids(self) -> float:
        return self.num_correct / self.num_grids

    @property
    def is_correct(self) -> bool:
        return self.num_correct == self.num_grids


def grade_partition(
    expected: Sequence[np.ndarray], predicted: Sequence[np.ndarray | None]
) -> PartitionGrade:
    """Grades the predicted grids of a partition, position by position."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted grids for {len(expected)} expected grids")
    if not expected:
        raise ValueError("a partition needs at least one grid to grade")
    return PartitionGrade(tuple(pixel_score(e, p) for e, p in zip(expected, predicted)))


def fingerprint(outputs: Sequence[np.ndarray]) -> str:
    """SHA-256 hex digest of a prediction's output grids (train then test).

    Hashes each grid's shape and its values as int64, so equal grids give equal
    fingerprints whatever integer dtype the program returned.
    """
    digest = hashlib.sha256()
    for grid in outputs:
        grid = np.ascontiguousarray(grid, dtype=np.int64)
        digest.update(repr(grid.shape).encode())
        digest.update(grid.tobytes())
    return digest.hexdigest()
