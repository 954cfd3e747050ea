"""``python -m norm_ext.bench``: norm_ext against torch eager, torch.compile and every installed
normalization library, checked against float64 references, in time, GB/s and % of the measured copy
bandwidth. See ``python -m norm_ext.bench --help``."""

from .harness import Config, run

__all__ = ["Config", "run"]
