"""The ``align_corners`` rule of bilinear resizes, shared by kMaX's pixel decoder and the heads.

bytedance's port aligns corners only when the source width is odd; deeplab2 always does
(spec ``kmax_deeplab.md`` §1.1, ``docs/parity.md``).
"""

from __future__ import annotations

ALIGN_CORNERS_RULES = ("bytedance", "always")


def resize_align_corners(source_width: int, rule: str = "bytedance") -> bool:
    """The ``align_corners`` flag of a bilinear resize whose source is ``source_width`` wide.

    bytedance (BD) switches align_corners on only when the *source* width is odd; deeplab2
    (``rule="always"``) always aligns corners. With a 32k+1 canvas every map is odd except
    the stride-32 one when k is odd (e.g. 97 -> 4), so the rules differ only there: the
    stride-32 -> 16 fuse and the aux semantic decoder's upsamplings.

    Raises:
        ValueError: unknown ``rule``.
    """
    if rule == "bytedance":
        return source_width % 2 == 1
    if rule == "always":
        return True
    raise ValueError(f"align_corners rule must be one of {ALIGN_CORNERS_RULES}, got {rule!r}")


__all__ = ["ALIGN_CORNERS_RULES", "resize_align_corners"]
