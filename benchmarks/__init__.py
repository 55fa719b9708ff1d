"""Benchmarks: the quantizer lookup alone (quantizer.py) and every backend against eager (compare.py).

Run them as scripts from the repository root (`python benchmarks/quantizer.py`) or as modules
(`python -m benchmarks.quantizer`). Speed targets live here, as printed ratios, never in timed tests.
"""
