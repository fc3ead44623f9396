"""Benchmarks: ``python -m bench`` (the load generator, ``memlookup-benchmark``)
and ``python -m bench.compare`` (memlookup and Redis side by side, into
``docs/BENCHMARKS.md``)."""
