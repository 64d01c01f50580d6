"""Layers, one small file per mechanism."""

from biasbench.layers.norm import BatchNorm1dNoShift, BatchNorm2dNoShift

__all__ = ["BatchNorm1dNoShift", "BatchNorm2dNoShift"]
