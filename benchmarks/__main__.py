"""``python -m benchmarks``: run the suite (see ``--help``)."""

from ._suite import main

main()
