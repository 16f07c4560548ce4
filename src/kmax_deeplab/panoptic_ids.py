"""The COCO-panoptic PNG encoding of segment ids: ``id = R + 256·G + 256²·B``.

One implementation shared by the dataset reader and the synthetic writer (``data``), the
evaluator (``evaluation``) and the prediction writers (``engine``); it sits beside
``fileio`` so that none of them imports another sideways.
"""

from __future__ import annotations

import numpy as np

MAX_ID = 256 ** 3  # ids must lie in [0, 256³)


def rgb_to_id(rgb: np.ndarray, dtype: np.dtype | type = np.int64) -> np.ndarray:
    """Decode colours into segment ids (panopticapi's ``rgb2id``).

    Args:
        rgb: ``[H, W, 3+]`` colours (uint8, or any integer type; channels past the third,
            such as alpha, are ignored as panopticapi does), or ``[H, W]`` ids, returned
            as they are (cast to ``dtype``).
        dtype: output dtype; the evaluator asks for uint32, the cheapest exact type.

    Returns:
        ``[H, W]`` ids of ``dtype``.

    Raises:
        ValueError: ``rgb`` is neither ``[H, W]`` nor ``[H, W, C>=3]``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(dtype, copy=False)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected [H, W, 3] colours, got shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        # uint8 channels -> one uint32 word by shifts (no wider temporaries).
        ids = rgb[..., 2].astype(np.uint32) << 16
        ids |= rgb[..., 1].astype(np.uint32) << 8
        ids |= rgb[..., 0]
    else:
        c = rgb[..., :3].astype(np.uint32)
        ids = c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]
    return ids.astype(dtype, copy=False)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode ``[H, W]`` integer ids into ``[H, W, 3]`` uint8 colours.

    Raises:
        ValueError: an id is negative or >= 256³ (it would not fit in a 24-bit colour).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_ID):
        raise ValueError(f"segment ids must lie in [0, 256^3), got [{ids.min()}, {ids.max()}]")
    # [H, W] -> [H, W, 3]: base-256 digits, least significant (R) first.
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // (256 * 256)
    return out
