"""nebula-sdk's benchmark suite: ``python -m benchmarks`` (``--quick`` for a one-minute run).

Needs the comparison clients: ``pip install -e '.[bench]'``. See benchmarks/README.md.
"""
