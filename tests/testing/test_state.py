"""The fake server's plain state: the model table, recorded requests, fault queues and per-key limits."""

from __future__ import annotations

import threading

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from nebula_async.testing._state import (
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_MODELS,
    FakeModel,
    Fault,
    Limits,
    RecordedHeaders,
    RecordedRequest,
    Script,
    merge_models,
    seconds_header,
)
from tests.testing._support import EXAMPLE_MODELS, FAKE_KEY, REFERENCE_MODELS


class FakeClock:
    """A clock the test moves by hand, in seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(
    clock: FakeClock,
    *,
    per_second: int | None = None,
    per_minute: int | None = None,
    quota: int | None = None,
) -> Limits:
    return Limits(
        threading.Lock(),
        requests_per_second=per_second,
        requests_per_minute=per_minute,
        token_quota=quota,
        clock=clock,
    )


# --- models ----------------------------------------------------------------------------------------


def test_defaults_are_the_reference_table_then_its_example_models() -> None:
    """With no models given, the table holds the API reference's six models, in order, then its examples'."""
    table = merge_models([], default_models=True)
    assert list(table) == [*REFERENCE_MODELS, *EXAMPLE_MODELS]
    assert [m.name for m in DEFAULT_MODELS] == [*REFERENCE_MODELS, *EXAMPLE_MODELS]
    assert all(table[m.name] is m for m in DEFAULT_MODELS)
    assert {name: table[name].context_length for name in EXAMPLE_MODELS} == EXAMPLE_MODELS


def test_a_name_adds_a_model_with_the_default_context() -> None:
    """A bare name adds a model with an 8192-token context next to the defaults."""
    table = merge_models(["mistral-7b"], default_models=True)
    assert table["mistral-7b"] == FakeModel("mistral-7b", 8192)
    assert DEFAULT_CONTEXT_LENGTH == 8192
    assert list(table) == [*REFERENCE_MODELS, *EXAMPLE_MODELS, "mistral-7b"]


def test_same_name_replaces_the_default() -> None:
    """A model named like a default replaces it (by name) rather than duplicating it."""
    table = merge_models([FakeModel("Llama3.3-70B", 100)], default_models=True)
    assert table["Llama3.3-70B"].context_length == 100
    assert len(table) == len(REFERENCE_MODELS) + len(EXAMPLE_MODELS)


def test_later_entries_win() -> None:
    """Of two entries with one name, the later one is kept."""
    table = merge_models([FakeModel("x", 10), "x"], default_models=False)
    assert table == {"x": FakeModel("x", DEFAULT_CONTEXT_LENGTH)}


def test_default_models_false_keeps_only_the_given_ones() -> None:
    """default_models=False gives a table of just the models passed, from any iterable."""
    models: list[str | FakeModel] = ["a", FakeModel("b", 5)]
    table = merge_models(iter(models), default_models=False)
    assert table == {"a": FakeModel("a"), "b": FakeModel("b", 5)}


@pytest.mark.parametrize(
    ("name", "context_length", "error", "match"),
    [
        ("m", 0, ValueError, r"^context_length must be an int >= 1, got 0$"),
        ("m", 8.5, TypeError, r"^context_length must be an int, got float$"),
        ("m", True, TypeError, r"^context_length must be an int, got bool$"),
        ("", 16, TypeError, r"^a model name must be a non-empty str, got ''$"),
    ],
)
def test_a_bad_fake_model_is_refused(
    name: str, context_length: object, error: type[Exception], match: str
) -> None:
    """FakeModel refuses an empty name and a context length that is not an int >= 1, saying which."""
    with pytest.raises(error, match=match):
        FakeModel(name, context_length)  # type: ignore[arg-type]  # deliberately not an int


@pytest.mark.parametrize("models", ["gpt-4", FakeModel("gpt-4")])
def test_a_single_model_instead_of_a_list_is_a_type_error(models: str | FakeModel) -> None:
    """A bare string (which would iterate as letters) or one FakeModel raises TypeError with a list hint."""
    with pytest.raises(TypeError, match=r"models must be a list .*e\.g\. models=\['gpt-4'\]"):
        merge_models(models, default_models=True)  # type: ignore[arg-type]  # the wrong type is the point


def test_a_wrong_item_is_a_type_error() -> None:
    """An item that is neither a name nor a FakeModel raises TypeError naming its type."""
    with pytest.raises(TypeError, match="got int"):
        merge_models(["a", 42], default_models=True)  # type: ignore[list-item]  # the wrong type is the point


def test_an_empty_table_is_a_value_error() -> None:
    """No models at all (no defaults, none given) raises ValueError."""
    with pytest.raises(ValueError, match="at least one model"):
        merge_models([], default_models=False)


@pytest.mark.parametrize(
    ("name", "context_length", "error"),
    [
        ("", 10, TypeError),
        (None, 10, TypeError),
        ("m", 0, ValueError),
        ("m", -1, ValueError),
        ("m", True, TypeError),
        ("m", 10.0, TypeError),
    ],
)
def test_fake_model_checks_its_fields(name: object, context_length: object, error: type[Exception]) -> None:
    """A FakeModel needs a non-empty name and a positive integer context length."""
    with pytest.raises(error):
        FakeModel(name, context_length)  # type: ignore[arg-type]  # the wrong types are the point


# --- recorded requests -----------------------------------------------------------------------------


def test_recorded_headers_are_case_insensitive() -> None:
    """Header lookup ignores case, as HTTP does."""
    headers = RecordedHeaders({"Content-Type": "application/json", "X-Custom": "1"})
    assert headers["content-type"] == "application/json"
    assert headers["X-CUSTOM"] == "1"
    assert "x-custom" in headers
    assert headers.get("missing") is None


def test_recorded_headers_keep_repeated_values() -> None:
    """A header sent twice keeps both values for getall; lookup gives the first."""
    headers = RecordedHeaders(CIMultiDict([("X-A", "1"), ("x-a", "2")]))
    assert headers["x-a"] == "1"
    assert headers.getall("X-A") == ["1", "2"]
    assert headers.getall("missing") == []


def test_recorded_headers_len_matches_iteration() -> None:
    """len() of headers with a repeated name equals the number of names iterated."""
    headers = RecordedHeaders(CIMultiDict([("X-A", "1"), ("X-A", "2"), ("B", "3")]))
    assert len(headers) == len(list(headers))


def test_evolving_a_recorded_request_keeps_repeated_headers() -> None:
    """attrs.evolve on a RecordedRequest keeps every value of a repeated header."""
    record = _record(CIMultiDict([("X-A", "1"), ("X-A", "2")]))
    assert attrs.evolve(record, status=200).headers.getall("X-A") == ["1", "2"]


def test_recorded_headers_made_from_recorded_headers_keep_repeated_values() -> None:
    """RecordedHeaders of a RecordedHeaders keeps every value of a repeated header, in order."""
    original = RecordedHeaders(CIMultiDict([("X-A", "1"), ("X-B", "b"), ("x-a", "2")]))
    copy = RecordedHeaders(original)
    assert copy.getall("X-A") == ["1", "2"]
    assert dict(copy) == dict(original) == {"X-A": "1", "X-B": "b"}


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_recorded_headers_repr_hides_authorization(name: str) -> None:
    """The repr of the headers shows other headers but never the Authorization value, in any case."""
    headers = RecordedHeaders({name: f"Bearer {FAKE_KEY}", "X-Other": "visible"})
    assert FAKE_KEY not in repr(headers)
    assert FAKE_KEY not in str(headers)
    assert "<redacted>" in repr(headers)
    assert "visible" in repr(headers)
    assert headers[name] == f"Bearer {FAKE_KEY}"  # hidden from repr only, still readable


def _record(
    headers: CIMultiDict[str] | dict[str, str], *, api_key: str = FAKE_KEY, status: int = 200
) -> RecordedRequest:
    """Return a recorded request with these headers, key and status."""
    return RecordedRequest(
        method="POST",
        path="/v1/text/generate",
        headers=headers,
        body=b'{"model": "m", "prompt": "p"}',
        json={"model": "m", "prompt": "p"},
        time=0.0,
        request_id="req_1",
        api_key=api_key,
        status=status,
    )


def test_recorded_request_repr_hides_the_key() -> None:
    """A recorded request's repr and str show neither the api_key nor the Authorization header's value."""
    record = _record({"Authorization": f"Bearer {FAKE_KEY}", "Content-Type": "application/json"})
    for shown in (repr(record), str(record), repr([record]), f"{record}"):
        assert FAKE_KEY not in shown
        assert "req_1" in shown
    assert record.api_key == FAKE_KEY
    assert record.headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_recorded_request_converts_headers() -> None:
    """Plain header dicts become case-insensitive RecordedHeaders, also when assigned later."""
    record = _record({"X-A": "1"})
    assert isinstance(record.headers, RecordedHeaders)
    record.headers = {"X-B": "2"}  # type: ignore[assignment]  # the converter runs on assignment too
    assert record.headers["x-b"] == "2"


def test_recorded_requests_differing_only_in_api_key_are_equal(request: pytest.FixtureRequest) -> None:
    """Records differing only in api_key compare equal, and pytest's diff of two records never shows it."""
    # Regression: records compared api_key, so pytest's diff of two unequal records showed the key.
    headers = {"Content-Type": "application/json"}
    assert _record(headers) == _record(headers, api_key="sk-other-key")
    explanations = request.config.hook.pytest_assertrepr_compare(
        config=request.config,
        op="==",
        left=_record(headers),
        right=_record(headers, api_key="sk-other-key", status=500),
    )
    diff = "\n".join(line for explanation in explanations for line in explanation or [])
    assert "status" in diff
    assert FAKE_KEY not in diff
    assert "api_key" not in diff


# --- scripted faults -------------------------------------------------------------------------------


def test_script_queues_request_and_stream_faults_apart() -> None:
    """Request faults and stream faults come out of separate queues, each in the order added."""
    script = Script(threading.Lock())
    fail, html = Fault("fail", status=503, code="server_error"), Fault("html", status=502)
    drop, event = Fault("drop_stream", events=2), Fault("error_event", code="server_error")
    script.add(fail, 2)
    script.add(drop, 1)
    script.add(html, 1)
    script.add(event, 1)
    assert script.pending() == 5
    assert [script.next_stream_fault() for _ in range(3)] == [drop, event, None]
    assert [script.next_request_fault() for _ in range(4)] == [fail, fail, html, None]
    assert script.pending() == 0


def test_script_clear_empties_both_queues() -> None:
    """clear() drops every pending fault, request and stream alike."""
    script = Script(threading.Lock())
    script.add(Fault("delay", seconds=0.1), 3)
    script.add(Fault("drop_stream"), 2)
    script.clear()
    assert script.pending() == 0
    assert script.next_request_fault() is None
    assert script.next_stream_fault() is None


# --- rate limits and quotas ------------------------------------------------------------------------


def test_no_limits_admits_everything() -> None:
    """Without rate limits every request is admitted at once."""
    limits = _limits(FakeClock())
    assert all(limits.admit("k") is None for _ in range(1000))


def test_per_second_limit_refuses_with_the_right_wait() -> None:
    """With 2 per second, a third request in the same second waits until the oldest leaves the window."""
    clock = FakeClock()
    limits = _limits(clock, per_second=2)
    assert limits.admit("k") is None
    clock.now += 0.25
    assert limits.admit("k") is None
    clock.now += 0.25
    assert limits.admit("k") == pytest.approx(0.5)
    clock.now += 0.25
    assert limits.admit("k") == pytest.approx(0.25)
    clock.now += 0.25  # the first request is now exactly one second old: it has left the window
    assert limits.admit("k") is None
    assert limits.admit("k") == pytest.approx(0.25)  # the second request, at 0.25 s, is still in it


def test_refused_requests_are_not_counted() -> None:
    """Requests refused while the window is full do not push back when the next one is allowed."""
    clock = FakeClock()
    limits = _limits(clock, per_second=1)
    assert limits.admit("k") is None
    for _ in range(10):
        clock.now += 0.05
        assert limits.admit("k") is not None
    clock.now = 1001.0
    assert limits.admit("k") is None


def test_keys_are_limited_independently() -> None:
    """One key's full window does not refuse another key."""
    clock = FakeClock()
    limits = _limits(clock, per_second=1)
    assert limits.admit("a") is None
    assert limits.admit("a") is not None
    assert limits.admit("b") is None


def test_per_minute_limit_refuses_after_the_per_second_window_clears() -> None:
    """With both windows, the per-minute one refuses (with its own, longer wait) once it is full."""
    clock = FakeClock()
    limits = _limits(clock, per_second=2, per_minute=3)
    assert limits.admit("k") is None
    assert limits.admit("k") is None
    assert limits.admit("k") == pytest.approx(1.0)  # per-second window full
    clock.now += 1.0
    assert limits.admit("k") is None  # third of the minute
    clock.now += 2.0
    assert limits.admit("k") == pytest.approx(57.0)  # per-second free, per-minute full until t0 + 60
    clock.now += 57.0
    assert limits.admit("k") is None


def test_wait_is_the_longer_of_both_windows() -> None:
    """When both windows are full, the wait is the later of the two release times."""
    clock = FakeClock()
    limits = _limits(clock, per_second=1, per_minute=1)
    assert limits.admit("k") is None
    clock.now += 0.5
    assert limits.admit("k") == pytest.approx(59.5)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.lists(st.tuples(st.integers(0, 12), st.sampled_from("ab")), max_size=30))
def test_sliding_window_matches_a_brute_force_count(limit: int, arrivals: list[tuple[int, str]]) -> None:
    """A key is admitted iff under ``limit`` of its requests are under a second old; else told how long."""
    clock = FakeClock()
    limits = _limits(clock, per_second=limit)
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    for gap, key in arrivals:
        clock.now += gap / 8  # eighths of a second: exact in binary, so no rounding at the edges
        recent = [t for t in admitted[key] if clock.now - t < 1.0]
        wait = limits.admit(key)
        if len(recent) < limit:
            assert wait is None
            admitted[key].append(clock.now)
        else:
            assert wait == recent[-limit] + 1.0 - clock.now


def test_reset_clears_windows_and_usage() -> None:
    """reset() forgets admitted requests and charged tokens for every key."""
    clock = FakeClock()
    limits = _limits(clock, per_second=1, quota=10)
    assert limits.admit("k") is None
    limits.charge("k", 10)
    limits.reset()
    assert limits.admit("k") is None
    assert limits.used("k") == 0
    assert limits.quota_left("k")


def test_quota_is_used_up_at_the_limit() -> None:
    """A key has quota left while it has used fewer tokens than the quota, not once it reaches it."""
    limits = _limits(FakeClock(), quota=100)
    assert limits.quota_left("k")
    limits.charge("k", 99)
    assert limits.quota_left("k")
    limits.charge("k", 1)
    assert limits.used("k") == 100
    assert not limits.quota_left("k")
    assert limits.quota_left("other")
    limits.charge("k", 50)  # a request admitted with 1 token left may overshoot; it is still charged
    assert limits.used("k") == 150


def test_no_quota_never_runs_out() -> None:
    """Without a quota every key always has tokens left, yet usage is still counted."""
    limits = _limits(FakeClock())
    limits.charge("k", 10**9)
    assert limits.quota_left("k")
    assert limits.used("k") == 10**9


@pytest.mark.parametrize(
    ("seconds", "retry_after", "retry_after_ms"),
    [
        (0, "0", "0"),
        (0.0, "0", "0"),
        (0.1, "1", "100"),
        (0.0001, "1", "1"),
        (1.0, "1", "1000"),
        (1.5, "2", "1500"),
        (57.25, "58", "57250"),
    ],
)
def test_seconds_header(seconds: float, retry_after: str, retry_after_ms: str) -> None:
    """Retry-After rounds up to whole seconds (HTTP's unit); retry-after-ms rounds up to milliseconds."""
    assert seconds_header(seconds) == {"Retry-After": retry_after, "retry-after-ms": retry_after_ms}
