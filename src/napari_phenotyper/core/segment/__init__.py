"""Segmentation backends behind one protocol (:class:`Segmenter`) and a registry."""

from .base import Segmenter, SegmentationError, planewise
from .registry import available, get_segmenter, segmenter_names

__all__ = ["Segmenter", "SegmentationError", "planewise", "available", "get_segmenter", "segmenter_names"]
