"""Speed benchmarks: ratios against a bare baseline measured in the same process.

Run all with ``python -m benchmarks`` (or ``make bench``), one with
``python -m benchmarks.bench_phase``. Timing never appears in the tests.
"""
