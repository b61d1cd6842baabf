"""The benchmark suite: module timings against references, scaling, plain-loop
throughput. Entry point: ``attnexp.bench.suite.main`` (``scripts/benchmark.py``, ``attnexp-bench``)."""
