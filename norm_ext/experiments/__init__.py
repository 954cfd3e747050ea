"""Experiments that answer questions about normalization by running them.

``python -m norm_ext.experiments normalization [--tiny] [--out DIR]``: see :mod:`.normalization`.
"""
