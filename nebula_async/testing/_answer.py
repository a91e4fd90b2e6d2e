"""How the fake server answers one request: routing, scripted faults, auth, limits, checks, the reply.

The checks run in the API's order: path and method, then a scripted fault, then the key, the rate
limit, the body's size, type and fields, the model, the context length and the quota.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from .._models import GenerateRequest
from ._faults import STREAM_ONLY, RandomFaults
from ._generate import count_tokens, default_reply, generate
from ._logs import logger
from ._state import FakeModel, Fault, Limits, RecordedRequest, Script, seconds_header
from ._streaming import write_stream
from ._validate import InvalidJSON, Params, Rejection, check_body, decode_body
from ._wire import MAX_BODY, PATH, bearer, error, html_error, stream_events, success

__all__ = ["Answerer", "Settings"]

_DEFAULT_MAX_TOKENS = 256  # the API reference's default
_DEFAULT_TEMPERATURE = 0.7
_DEFAULT_TOP_P = 1.0


class Settings(Protocol):
    """The settings a test may change while the server runs: read afresh for every request."""

    models: dict[str, FakeModel]
    replies: dict[str, str]
    reply: Callable[[GenerateRequest], str] | None
    time_to_first_token: float
    token_delay: float
    stream_usage: bool


class Answerer:
    """Answer requests as the API would; ``handle`` is the aiohttp.web handler."""

    def __init__(
        self,
        settings: Settings,
        *,
        api_keys: frozenset[str] | None,
        script: Script,
        limits: Limits,
        requests: collections.deque[RecordedRequest],
    ) -> None:
        self._settings = settings
        self._api_keys = api_keys
        self._script = script
        self._limits = limits
        self._requests = requests
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._active: set[asyncio.Task[Any]] = set()  # tasks answering a request right now
        self.random_faults: RandomFaults | None = None  # set by FakeNebulaServer.faults

    def cancel_all(self) -> None:
        """Cancel every answer in flight: a paced stream would otherwise hold a shutdown up."""
        for task in list(self._active):
            task.cancel()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Record ``request`` and answer it."""
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each connection in a task
        self._active.add(task)
        try:
            return await self._record_and_answer(request)
        finally:
            self._active.discard(task)

    async def _record_and_answer(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = f"req_{self._id_prefix}{next(self._ids):06d}"
        try:
            raw: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = None
        body = decode_body(raw) if raw else None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=raw or b"",
            json=None if isinstance(body, InvalidJSON) else body,
            time=time.time(),
            request_id=request_id,
            api_key=bearer(request.headers.get("Authorization")),
        )
        self._requests.append(record)
        response = await self._answer(request, raw, body, record)
        if response is not None:
            record.status = response.status
            return response
        # A scripted disconnect: the transport is gone; aiohttp writes nothing more to it.
        return web.Response(status=500)

    async def _answer(
        self, request: web.BaseRequest, raw: bytes | None, body: object, record: RecordedRequest
    ) -> web.StreamResponse | None:
        rid = record.request_id
        if request.path != PATH:
            return error(rid, 404, "not_found", f"No route for {request.path}; the API serves POST {PATH}")
        if request.method != "POST":
            answer = error(rid, 405, "method_not_allowed", f"{request.method} is not allowed; use POST")
            answer.headers["Allow"] = "POST"
            return answer
        fault = self._script.next_request_fault()
        random_faults = self.random_faults  # read once: another thread may set server.faults
        random_stream_fault: tuple[str, Fault] | None = None
        if fault is None and random_faults is not None:
            drawn = random_faults.draw(stream=isinstance(body, dict) and body.get("stream") is True)
            if drawn is not None and drawn[0] in STREAM_ONLY:
                random_stream_fault = drawn  # it waits for the stream, as a scripted one does
            elif drawn is not None:
                random_faults.injected(drawn[0])
                fault = drawn[1]
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "disconnect":
                if request.transport is not None:
                    request.transport.abort()
                return None
            elif fault.kind == "html":
                return html_error(rid, fault.status)
            else:
                headers = None if fault.retry_after is None else seconds_header(fault.retry_after)
                assert fault.code is not None  # fail_next always sets one
                return error(rid, fault.status, fault.code, fault.message, fault.details, headers)
        key = record.api_key
        if not key:
            return error(
                rid, 401, "invalid_api_key", "Missing API key: send 'Authorization: Bearer YOUR_API_KEY'"
            )
        if self._api_keys is not None and key not in self._api_keys:
            return error(rid, 401, "invalid_api_key", "Invalid API key")
        wait = self._limits.admit(key)
        if wait is not None:
            limits = {"rate_limit": self._limits.describe()}
            return error(rid, 429, "rate_limit_exceeded", "Too many requests", limits, seconds_header(wait))
        if raw is None:
            why = f"must be at most {MAX_BODY} bytes"
            return error(rid, 413, "invalid_request", "The request body is too large", {"body": why})
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return error(
                rid,
                415,
                "invalid_request",
                "The request body must be JSON",
                {"Content-Type": f"must be application/json, got {content_type or 'nothing'}"},
            )
        params = check_body(body)
        if isinstance(params, Rejection):
            return error(rid, params.status, params.code, params.message, params.details)
        settings = self._settings
        model = settings.models.get(params.model)
        if model is None:
            why = f"Model '{params.model}' not found"
            return error(rid, 404, "model_not_found", why, {"model": why})
        prompt_tokens = count_tokens(params.prompt)
        if prompt_tokens > model.context_length:
            why = f"{prompt_tokens} tokens; {model.name} accepts at most {model.context_length}"
            return error(rid, 400, "context_length_exceeded", "Input prompt is too long", {"prompt": why})
        if not self._limits.quota_left(key):
            why = f"the quota of {self._limits.token_quota} tokens for this key is used up"
            return error(rid, 429, "insufficient_quota", "Not enough credits or quota", {"quota": why})
        text = self._reply_text(params)
        if isinstance(text, BaseException):
            # A 500 as a broken server gives, naming the user's own error so the test failure shows it.
            why = f"FakeNebulaServer could not make the reply: {type(text).__name__}: {text}"
            return error(rid, 500, "server_error", why)
        room = model.context_length - prompt_tokens
        limit = min(_DEFAULT_MAX_TOKENS if params.max_tokens is None else params.max_tokens, room)
        result = generate(text, max_tokens=limit, stop=params.stop)
        self._limits.charge(key, prompt_tokens + result.completion_tokens)
        if params.stream:
            usage_of = prompt_tokens if settings.stream_usage else None
            stream_fault = self._script.next_stream_fault()
            if stream_fault is None and random_stream_fault is not None and random_faults is not None:
                random_faults.injected(random_stream_fault[0])
                stream_fault = random_stream_fault[1]
            return await write_stream(
                request,
                record,
                stream_events(result, usage_of=usage_of),
                stream_fault,
                time_to_first_token=settings.time_to_first_token,
                token_delay=settings.token_delay,
            )
        # A plain answer takes as long as the whole stream would.
        pause = settings.time_to_first_token + settings.token_delay * max(0, len(result.chunks) - 1)
        if pause:
            await asyncio.sleep(pause)
        return success(rid, result, prompt_tokens)

    def _reply_text(self, params: Params) -> str | BaseException:
        """Return the full reply, or the error of a broken ``replies`` entry or ``reply`` function."""
        settings = self._settings
        text: object = settings.replies.get(params.prompt)
        if text is not None:
            if not isinstance(text, str):  # server.replies is a plain dict: anything can go in later
                return TypeError(f"replies[{params.prompt[:50]!r}] is a {type(text).__name__}, not a str")
            return text
        if settings.reply is None:
            return default_reply(
                params.model,
                params.prompt,
                _DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
                _DEFAULT_TOP_P if params.top_p is None else params.top_p,
            )
        request = GenerateRequest(
            model=params.model,
            prompt=params.prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
        )
        try:
            made: object = settings.reply(request)  # typed str, but it is the user's code
        except Exception as exc:  # the user's function, not ours: answer for it, don't crash
            logger.exception("FakeNebulaServer: the reply function raised")
            return exc
        if not isinstance(made, str):
            logger.error("FakeNebulaServer: the reply function returned a %s, not a str", type(made).__name__)
            return TypeError(f"the reply function returned a {type(made).__name__}, not a str")
        return made
