"""RateLimit's checks and estimate, and the pure pacing schedule on a clock the test moves by hand."""

from __future__ import annotations

import math

import pytest

from nebula_async import RateLimit
from nebula_async._limit import Pacing


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "needs requests_per_minute, tokens_per_minute or both"),
        (
            {"requests_per_minute": 0},
            ValueError,
            "requests_per_minute must be a finite number per minute > 0, got 0$",
        ),
        # These broke: an int too large for a float raised OverflowError, not a ValueError naming it.
        (
            {"requests_per_minute": 10**400},
            ValueError,
            "requests_per_minute must be a finite .* int of 1329 bits",
        ),
        ({"tokens_per_minute": 60, "burst_seconds": 10**400}, ValueError, "burst_seconds must be a finite"),
        ({"tokens_per_minute": -5}, ValueError, "tokens_per_minute must be a finite number per minute"),
        ({"requests_per_minute": math.inf}, ValueError, "requests_per_minute must be a finite number"),
        ({"requests_per_minute": "60"}, TypeError, "must be a number per minute or None .no limit., got str"),
        ({"requests_per_minute": True}, TypeError, "requests_per_minute must be a number"),
        ({"requests_per_minute": 60, "burst_seconds": -1}, ValueError, "burst_seconds must be a finite"),
        ({"requests_per_minute": 60, "burst_seconds": None}, TypeError, "burst_seconds must be a number"),
        ({"requests_per_minute": 60, "token_counter": 4}, TypeError, "token_counter must be a function"),
    ],
)
def test_bad_rate_limits_are_refused_with_what_to_fix(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """A RateLimit with no limit, a non-positive or non-number limit, or a bad burst or counter is refused."""
    with pytest.raises(error, match=message):
        RateLimit(**kwargs)  # type: ignore[arg-type]  # the wrong types are the point


def test_repr_shows_whether_a_counter_is_set_not_what_it_is() -> None:
    """The repr names the limits and says <set> for a token_counter; equality ignores the counter."""
    counted = RateLimit(tokens_per_minute=1000, token_counter=len)
    assert repr(counted) == (
        "RateLimit(requests_per_minute=None, tokens_per_minute=1000, burst_seconds=0.0, token_counter=<set>)"
    )
    assert "token_counter=None" in repr(RateLimit(requests_per_minute=60))
    assert counted == RateLimit(tokens_per_minute=1000)


def test_estimate_is_a_quarter_of_the_prompt_plus_max_tokens_or_256() -> None:
    """The default estimate rounds len(prompt) / 4 up and adds max_tokens, or the API's default of 256."""
    limit = RateLimit(tokens_per_minute=10_000)
    assert limit.estimate("abcde", 10) == 2 + 10
    assert limit.estimate("abcd", None) == 1 + 256
    assert RateLimit(tokens_per_minute=10_000, token_counter=lambda p: 7).estimate("x" * 400, 3) == 10


def test_a_call_larger_than_the_tokens_per_minute_is_refused_naming_both_numbers() -> None:
    """An estimate above tokens_per_minute raises ValueError with the estimate and the limit."""
    limit = RateLimit(tokens_per_minute=300)
    assert limit.estimate("x" * 176, None) == 300  # exactly the limit still fits
    with pytest.raises(ValueError, match=r"about 301 tokens .* more than tokens_per_minute=300"):
        limit.estimate("x" * 180, None)
    assert RateLimit(requests_per_minute=1).estimate("x" * 10_000, None) == 2756  # no token limit to exceed


@pytest.mark.parametrize("counted", [-1, 2.5, True, None])
def test_a_token_counter_must_return_a_count(counted: object) -> None:
    """A token_counter that returns something other than an int >= 0 is a TypeError naming the value."""
    limit = RateLimit(tokens_per_minute=1000, token_counter=lambda p: counted)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="token_counter must return an int >= 0"):
        limit.estimate("hi", 1)


def test_no_burst_spaces_calls_evenly_at_the_rate() -> None:
    """At 120 requests per minute, calls may start every 0.5 s; one arriving late resets nothing ahead."""
    pacing = Pacing(RateLimit(requests_per_minute=120))
    assert pacing.ready_at(0) == -math.inf
    pacing.take(0, now=10.0)
    assert pacing.ready_at(0) == 10.5
    pacing.take(0, now=10.5)
    assert pacing.ready_at(0) == 11.0
    pacing.take(0, now=20.0)  # idle a while: no credit was saved up (no burst)
    assert pacing.ready_at(0) == 20.5


def test_burst_seconds_lets_calls_run_ahead_by_that_much() -> None:
    """With burst_seconds=1 at 2 requests per second, three calls start at once and the fourth waits."""
    pacing = Pacing(RateLimit(requests_per_minute=120, burst_seconds=1.0))
    for _ in range(3):
        assert pacing.ready_at(0) <= 0.0
        pacing.take(0, now=0.0)
    assert pacing.ready_at(0) == 0.5


def test_tokens_take_their_cost_over_rate_and_a_big_call_goes_in_its_turn() -> None:
    """At 60 tokens/s, 30 tokens take 0.5 s; a call larger than the burst waits only for those before it."""
    pacing = Pacing(RateLimit(tokens_per_minute=3600, burst_seconds=0.1))
    pacing.take(30, now=0.0)
    assert pacing.ready_at(30) == pytest.approx(0.4)  # 0.5 s of schedule, less the 0.1 s of burst
    pacing.take(600, now=0.4)  # ten seconds of rate, far above the burst: it goes, and the next waits
    assert pacing.ready_at(1) == pytest.approx(10.4)
    assert pacing.ready_at(0) == -math.inf  # a call that reserves no tokens is not held by them


def test_adjust_refunds_and_charges_debt() -> None:
    """adjust() moves the schedule back for a refund and forward for a debt, for requests and tokens."""
    pacing = Pacing(RateLimit(requests_per_minute=60, tokens_per_minute=600))
    pacing.take(100, now=0.0)  # tokens until 10 s, requests until 1 s
    assert pacing.ready_at(1) == pytest.approx(10.0)
    pacing.adjust(0, -90)  # the answer used 10 tokens
    assert pacing.ready_at(1) == pytest.approx(1.0)
    pacing.adjust(0, 50)  # ... or 60
    assert pacing.ready_at(1) == pytest.approx(6.0)
    pacing.adjust(-1, -60)  # the call never reached the server
    assert pacing.ready_at(1) == pytest.approx(0.0)


def test_a_bogus_debt_holds_the_schedule_one_minute_at_most() -> None:
    """A usage of billions of tokens (a broken server) delays later calls by one minute, not for days."""
    pacing = Pacing(RateLimit(tokens_per_minute=600))
    pacing.take(100, now=0.0)  # until 10 s
    pacing.adjust(0, 10**12)
    assert pacing.ready_at(1) == pytest.approx(70.0)


def test_the_gate_extends_never_shortens_and_reports_the_pause() -> None:
    """close_gate() says whether it closed an open gate; a later, shorter close does not shorten it."""
    pacing = Pacing(None)
    assert pacing.unlimited
    assert pacing.close_gate(5.0, now=0.0) is True
    assert pacing.close_gate(3.0, now=1.0) is False
    assert pacing.paused_for(1.0) == 4.0
    assert pacing.ready_at(0) == 5.0
    assert pacing.close_gate(7.0, now=2.0) is False
    assert pacing.paused_for(8.0) == 0.0
    assert pacing.close_gate(9.0, now=8.0) is True  # it had opened again
