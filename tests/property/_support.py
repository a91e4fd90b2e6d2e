"""Support of the property tests: how many examples a fuzz test runs, short in CI, long on request.

The fuzz tests (test_fuzz_*.py) run a few examples each by default, so the suite stays fast. For a
long run, set NEBULA_FUZZ_EXAMPLES, e.g.::

    NEBULA_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/property -k fuzz -p no:randomly \
        -o timeout=0 --hypothesis-show-statistics

which runs that many examples in each fuzz test (the socket one runs a tenth of it): about 17
minutes on a busy 2-core machine. The default run of all of them takes about 2 s.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_LONG = int(os.environ.get("NEBULA_FUZZ_EXAMPLES", "0") or 0)


def fuzz(examples: int) -> settings:
    """Return settings running ``examples`` examples, or NEBULA_FUZZ_EXAMPLES when it is set."""
    return _examples(_LONG or examples)


def fuzz_slow(examples: int) -> settings:
    """Like fuzz(), for tests whose examples each cost a server and a client: a tenth of a long run."""
    return _examples(_LONG // 10 or examples)


def _examples(count: int) -> settings:
    return settings(
        max_examples=count,
        deadline=None,  # the machine is shared: a slow example is not a failure
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
