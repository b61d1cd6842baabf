"""The benchmark suite: module timings against references, scaling, plain-loop throughput, and
one registry of sections (``suite.SECTIONS``). Entry point: ``attnexp.bench.suite.main``
(``scripts/benchmark.py``, ``attnexp-bench``).

May import: attnexp.attention, attnexp.config, attnexp.data, attnexp.models, attnexp.runs,
attnexp.tasks, attnexp.training, attnexp.util.
"""
