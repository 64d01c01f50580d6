"""Layers, one small file per mechanism."""

from biasbench.layers.norm import BatchNorm1dNoShift, BatchNorm2dNoShift

__all__ = ["BatchNorm1dNoShift", "BatchNorm2dNoShift"]
from biasbench.layers.dac import DACConv2d, DACLinear  # noqa: E402
from biasbench.layers.mba import MultiBiasActivation  # noqa: E402
from biasbench.layers.preact import SharedBiasPreActivation  # noqa: E402

__all__ += ["DACConv2d", "DACLinear", "MultiBiasActivation", "SharedBiasPreActivation"]
from biasbench.layers.abn import DynamicModulatedConv2d, DynamicMultiBiasLinear  # noqa: E402
from biasbench.layers.arr import AggregatedResponseLoss, ResponseTap  # noqa: E402
from biasbench.layers.raa import RAA, RAA2d  # noqa: E402

__all__ += ["DynamicModulatedConv2d", "DynamicMultiBiasLinear", "AggregatedResponseLoss", "ResponseTap", "RAA", "RAA2d"]
from biasbench.layers.activations import ACTIVATIONS, make_activation  # noqa: E402
from biasbench.layers.gdn import GDN  # noqa: E402
from biasbench.layers.grouped_dac import GroupedDACConv2d  # noqa: E402

__all__ += ["ACTIVATIONS", "make_activation", "GDN", "GroupedDACConv2d"]
