"""biasbench: a benchmark for neural-network units that put their capacity into biases."""

__version__ = "0.1.0"
