"""Accuracy and the paired interval of an artifact's accuracy difference from eager."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
INTERVAL = (
    f"paired bootstrap: {BOOTSTRAP_RESAMPLES} resamples of the images with replacement "
    "(the same images for the artifact and eager), fixed seed, percentile 2.5-97.5%"
)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: whether its label is among the `k` highest scores (k capped at the classes)."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == labels[:, None]).any(axis=-1)


def paired_bootstrap(
    correct: np.ndarray, eager_correct: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """95% interval of mean(correct) - mean(eager_correct), resampling images (pairs kept)."""
    diff = correct.astype(np.float64) - eager_correct.astype(np.float64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bounded memory however many images
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        means[start : start + count] = diff[rng.integers(0, n, size=(count, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
