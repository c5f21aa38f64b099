"""Segmentation backends behind one protocol (:class:`Segmenter`) and a registry."""

from .base import SegmentationError, Segmenter, planewise
from .registry import available, get_segmenter, segmenter_names

__all__ = ["SegmentationError", "Segmenter", "available", "get_segmenter", "planewise", "segmenter_names"]
