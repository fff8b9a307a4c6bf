"""Stress harness and benchmarks for lockstore.

``python -m stress`` (or ``lockstore stress``) runs the multi-process stress and fault-injection
scenarios; ``python -m stress.bench`` (or ``lockstore bench``) runs the benchmarks.
"""
