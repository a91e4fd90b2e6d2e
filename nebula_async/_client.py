"""AsyncNebulaClient: the asyncio-native client every other entry point drives."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import weakref
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RETRIES,
    ENV_API_KEY,
    ENV_BASE_URL,
    RetryPolicy,
    Timeout,
)
from ._errors import NebulaError
from ._models import GenerateRequest, TextGeneration, unstructure_request
from ._parse import parse_generation
from ._retry import retry_delay
from ._stream import TextStream
from ._version import __version__

if TYPE_CHECKING:
    import aiohttp

    from ._http import Transport

__all__ = ["AsyncNebulaClient"]

logger = logging.getLogger("nebula_async")
# A library does not print: without the application's logging set up, retry warnings stay silent.
logger.addHandler(logging.NullHandler())

USER_AGENT = f"nebula-sdk/{__version__} (nebula_async; Python {platform.python_version()})"

# Typed parameters: passing one through extra_body would bypass its validation.
_RESERVED_BODY_KEYS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream"})

_BATCH_ERRORS = (NebulaError, ValueError, TypeError)  # what one failed item of generate_many can raise


class AsyncNebulaClient:
    """Client for the Nebula text-generation API; one per event loop, shared by all its tasks.

    ``api_key`` falls back to ``NEBULA_API_KEY``; ``base_url`` to ``NEBULA_BASE_URL``, then the
    public endpoint. ``timeout`` is seconds or a :class:`Timeout`. ``retry`` wins over
    ``max_retries``. ``session`` is a ClientSession you own: used as given, never closed by us.
    Use ``async with`` or ``await client.aclose()`` to release connections.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        default_headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not key:
            raise NebulaError(f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable")
        if not isinstance(key, str):
            raise TypeError(f"api_key must be a str, got {type(key).__name__}")
        if key.strip() != key or not key.isprintable():
            # The key itself must never be echoed, so only say what is wrong with it.
            raise ValueError("api_key contains whitespace or control characters; check how it was read")
        self._base_url = _check_base_url(base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL)
        self._timeout = Timeout.coerce(timeout)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._retry = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        self._max_connections = max_connections
        if session is not None and not _is_client_session(session):
            raise TypeError(f"session must be an aiohttp.ClientSession, got {type(session).__name__}")
        self._session = session
        self._transport: Transport | None = None
        self._streams: weakref.WeakSet[TextStream] = weakref.WeakSet()  # open ones, closed by aclose()
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        for name, value in (default_headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"default_headers must map str to str, got {name!r}: {type(value).__name__}")
            headers[name] = value
        # Built once per client, not per call.
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def timeout(self) -> Timeout:
        """The default timeouts of every call."""
        return self._timeout

    @property
    def retry(self) -> RetryPolicy:
        """The default retry policy of every call."""
        return self._retry

    def __repr__(self) -> str:
        return f"AsyncNebulaClient(base_url={self._base_url!r}, max_retries={self._retry.max_retries})"

    async def __aenter__(self) -> AsyncNebulaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (not a session you passed in); idempotent."""
        if self._transport is None:
            self._transport = self._new_transport()
        for stream in list(self._streams):
            stream._discard()
        await self._transport.aclose()

    async def generate_text(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int | None = None,
    ) -> TextGeneration:
        """Generate text for ``prompt``; retried on rate limits, 5xx and connection errors.

        Raises ValueError or TypeError for bad arguments before sending, an APIError subclass
        for an error answer, APIConnectionError or APITimeoutError when the API can't be reached.
        """
        request = GenerateRequest(model, prompt, max_tokens, temperature, top_p, stop)
        body = _encode(request, extra_body, stream=False)
        return await self._generate(body, self._policy(max_retries), self._timeout_for(timeout))

    def stream_text(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | Timeout | None = None,
        max_retries: int | None = None,
    ) -> TextStream:
        """Return a TextStream for ``prompt``; nothing is sent until it is entered or iterated.

        Arguments are checked now. Use it as ``async with client.stream_text(...) as stream:
        async for chunk in stream: ...``.
        """
        request = GenerateRequest(model, prompt, max_tokens, temperature, top_p, stop)
        body = _encode(request, extra_body, stream=True)
        return TextStream(self, body, self._policy(max_retries), self._timeout_for(timeout))

    async def generate_many(
        self,
        requests: Iterable[GenerateRequest | Mapping[str, Any]]
        | AsyncIterable[GenerateRequest | Mapping[str, Any]],
        *,
        concurrency: int = 16,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run many generations, at most ``concurrency`` at once; results come in input order.

        ``requests`` holds GenerateRequest objects or dicts of generate_text's keywords, and is
        read lazily (an endless generator is fine as long as it ends). With ``return_exceptions``
        a failed item's exception stands in its place; otherwise the first failure cancels the
        rest and is raised.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        results: list[Any] = []
        next_item = _item_source(requests)

        async def worker() -> None:
            while True:
                item = await next_item()
                if item is None:
                    return
                # The slot is taken before any await, so results keep input order.
                index = len(results)
                results.append(None)
                try:
                    results[index] = await self._generate_item(item[0])
                except _BATCH_ERRORS as exc:
                    if not return_exceptions:
                        raise
                    results[index] = exc

        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return results

    async def _generate_item(self, item: GenerateRequest | Mapping[str, Any]) -> TextGeneration:
        if isinstance(item, GenerateRequest):
            body = _encode(item, None, stream=False)
            return await self._generate(body, self._retry, self._timeout)
        if isinstance(item, Mapping):
            return await self.generate_text(**item)
        raise TypeError(f"generate_many items must be GenerateRequest or dict, got {type(item).__name__}")

    async def _generate(self, body: bytes, policy: RetryPolicy, timeout: Timeout) -> TextGeneration:
        transport = self._get_transport()
        client_timeout = transport.client_timeout(timeout, stream=False)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await transport.post(body, self._headers, client_timeout, attempt)
                raw = await transport.read_body(response)
                text, usage = parse_generation(response.status, raw, response.headers)
                return TextGeneration(text, usage, response.headers.get("x-request-id"), attempt - 1)
            except NebulaError as err:
                if not await self._wait_before_retry(policy, attempt, err):
                    raise

    async def _wait_before_retry(self, policy: RetryPolicy, attempt: int, error: NebulaError) -> bool:
        """Sleep before retry ``attempt`` and return True, or return False to give up."""
        delay = retry_delay(policy, attempt, error)
        if delay is None:
            return False
        logger.warning(
            "retrying in %.3f s (retry %d of %d) after %s: %s",
            delay, attempt, policy.max_retries, type(error).__name__, error,
        )  # fmt: skip
        await asyncio.sleep(delay)
        return True

    def _get_transport(self) -> Transport:
        transport = self._transport
        if transport is None:
            transport = self._transport = self._new_transport()
        return transport

    def _new_transport(self) -> Transport:
        from ._http import Transport  # aiohttp is imported on first use, not with the package

        return Transport(
            url=self._base_url + "/text/generate",
            max_connections=self._max_connections,
            session=self._session,
        )

    def _policy(self, max_retries: int | None) -> RetryPolicy:
        if max_retries is None:
            return self._retry
        return attrs.evolve(self._retry, max_retries=max_retries)

    def _timeout_for(self, timeout: float | Timeout | None) -> Timeout:
        return self._timeout if timeout is None else Timeout.coerce(timeout)


def _check_base_url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"base_url must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {url!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"base_url must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def _is_client_session(session: object) -> bool:
    import aiohttp  # only reached when a session is passed, which means aiohttp is loaded already

    return isinstance(session, aiohttp.ClientSession)


def _encode(request: GenerateRequest, extra_body: Mapping[str, Any] | None, *, stream: bool) -> bytes:
    payload = unstructure_request(request)
    if extra_body:
        clash = _RESERVED_BODY_KEYS.intersection(extra_body)
        if clash:
            name = sorted(clash)[0]
            hint = "use stream_text()" if name == "stream" else f"pass {name}= as an argument"
            raise ValueError(f"extra_body must not set {name!r}: {hint}")
        payload.update(extra_body)
    if stream:
        payload["stream"] = True
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra_body must hold only JSON values: {exc}") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(
            f"{_unencodable_field(payload)} is not valid text: it holds a lone surrogate"
        ) from None


def _unencodable_field(payload: Mapping[str, Any]) -> str:
    for name, value in payload.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return name if name in _RESERVED_BODY_KEYS else f"extra_body[{name!r}]"
    return "the request"  # unreachable in practice: encode() failed, so some field is at fault


def _item_source(
    requests: Iterable[GenerateRequest | Mapping[str, Any]]
    | AsyncIterable[GenerateRequest | Mapping[str, Any]],
) -> Any:
    """Return an async function giving the next item as a 1-tuple, or None at the end."""
    if isinstance(requests, AsyncIterable):
        iterator = aiter(requests)
        lock = asyncio.Lock()  # an async generator can't be advanced by two workers at once
        done = False

        async def next_async() -> tuple[Any] | None:
            nonlocal done
            async with lock:
                if done:
                    return None
                try:
                    return (await anext(iterator),)
                except StopAsyncIteration:
                    done = True
                    return None

        return next_async
    if not isinstance(requests, Iterable) or isinstance(requests, (str, bytes, Mapping)):
        raise TypeError(
            f"requests must be an iterable of GenerateRequest or dicts, got {type(requests).__name__}"
        )
    sync_iterator = iter(requests)

    async def next_sync() -> tuple[Any] | None:
        for item in sync_iterator:
            return (item,)
        return None

    return next_sync
