"""Semantic segmentation task heads (mmseg decode heads; K-Net's semantic variant builds on them)."""

from kmax_deeplab.modeling.semantic.heads import (
    ASPPHead,
    ConvModule,
    DecodeHead,
    FCNHead,
    PPM,
    PSPHead,
    UPerHead,
    build_decode_head,
)

__all__ = ["ASPPHead", "ConvModule", "DecodeHead", "FCNHead", "PPM", "PSPHead", "UPerHead", "build_decode_head"]
