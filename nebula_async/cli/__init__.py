"""The ``nebula`` command line: ``pip install 'nebula-sdk[cli]'``, then ``nebula --help``.

Only this package imports click and rich; the SDK itself never does. ``main()`` is the console script.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["INSTALL_HINT", "main"]

INSTALL_HINT = "nebula: the command line needs the [cli] extra: pip install 'nebula-sdk[cli]'"


def main(argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> int:
    """Run the ``nebula`` command line and return its exit status (0, 1, 2 or 130).

    ``argv`` defaults to ``sys.argv[1:]``. Without click or rich installed it prints how to install
    them and returns 2. The console script calls it and exits with what it returns.
    """
    import importlib.util

    try:
        import click  # noqa: F401  # needed at once; rich is only looked for: importing it costs 30 ms
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    try:
        rich_missing = importlib.util.find_spec("rich") is None
    except ValueError:  # a None entry in sys.modules: made unimportable on purpose
        rich_missing = True
    if rich_missing:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from ._app import run

    return run(argv, prog_name=prog_name)
