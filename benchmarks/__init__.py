"""Performance benchmarks of runbroker against its targets: ``python -m benchmarks [b1 b2 b3]``.

Each benchmark prints its figure, a baseline measured in the same run and their ratio, the
machine's core count and PASS/FAIL against the target. The summary table is printed at the end
and written to ``benchmarks/results.json``.
"""
