"""``python -m nebula_async.cli``: the ``nebula`` command without its console script."""

from __future__ import annotations

import sys

from . import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main(prog_name=f"{sys.executable} -m nebula_async.cli"))
