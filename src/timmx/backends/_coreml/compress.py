"""Weight compression of a converted model: int8 / int4 / k-means palettes / fp16 weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from timmx.backends._coreml.plan import Plan

INT4_BLOCK = 32


def compress(ct: Any, mlmodel: Any, plan: Plan) -> Any:
    kind = plan.compression
    if kind is None:
        return mlmodel
    if not plan.mlprogram:
        from coremltools.models.neural_network import quantization_utils

        if kind == "int8":
            return quantization_utils.quantize_weights(mlmodel, 8, quantization_mode="linear")
        return quantization_utils.quantize_weights(mlmodel, 16)  # fp16-weights
    import coremltools.optimize.coreml as cto

    if kind in ("int8", "int4"):
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype=kind,
            granularity="per_channel" if kind == "int8" else "per_block",
            **({"block_size": INT4_BLOCK} if kind == "int4" else {}),
        )
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    bits = int(kind.removeprefix("palettize"))
    lut = kmeans_lut(bits)
    if lut is None:  # coremltools' own k-means (scikit-learn for fp32 weights: slow)
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=bits)
    else:
        config = cto.OpPalettizerConfig(mode="custom", lut_function=lut)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))


def kmeans_lut(bits: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Optimal 1-D k-means over the weight's distinct float16 values, weighted by their counts.

    coremltools clusters fp32 weights (and fp16 ones under 10,000 values) with scikit-learn's
    KMeans, which took 343 s for resnet18; its bundled 1-D k-means with weights does the same
    job exactly, in seconds. Returns None when that module is not there.
    """
    try:
        from coremltools._deps import _kmeans1d
    except ImportError:
        return None
    if _kmeans1d is None:
        return None

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(weight).reshape(-1).astype(np.float16)
        values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        size = 1 << bits
        k = min(len(values), size)
        result = _kmeans1d.cluster(
            values.astype(np.float64).tolist(), k, weights=counts.astype(np.float64).tolist()
        )
        lut = np.zeros(size, dtype=weight.dtype)
        lut[:k] = np.asarray(result.centroids, dtype=np.float64)
        clusters = np.asarray(result.clusters, dtype=np.uint8)
        return lut, clusters[inverse.reshape(-1)]

    return lut_function
