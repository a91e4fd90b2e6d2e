"""AsyncNebulaClient: the asyncio-native client every other entry point drives."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias, overload

import attrs

from ._batch import Completions, ItemSource
from ._calls import CallPath
from ._checks import check_int
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RETRIES,
    ENV_API_KEY,
    ENV_BASE_URL,
    RetryPolicy,
    Timeout,
    build_headers,
    check_api_key,
    check_base_url,
    cleartext_host,
)
from ._errors import APIError
from ._limit import RateLimit
from ._models import GenerateRequest, TextGeneration, encode_request
from ._parse import generation_or_error
from ._runner import BatchProgress, BatchSummary, check_batch_options, run_batch
from ._secret import Secret
from ._stream import TextStream

if TYPE_CHECKING:
    import aiohttp

    from ._http import Transport
    from ._tls import Verify

__all__ = ["AsyncNebulaClient", "BatchInput"]

logger = logging.getLogger("nebula_async")

BatchInput: TypeAlias = (
    "Iterable[GenerateRequest | Mapping[str, Any]] | AsyncIterable[GenerateRequest | Mapping[str, Any]]"
)
"""What generate_many reads: GenerateRequest objects or dicts of generate_text's keywords."""


class AsyncNebulaClient:
    """Client for the Nebula text-generation API; one per event loop, shared by all its tasks.

    ``api_key`` falls back to ``NEBULA_API_KEY``; ``base_url`` to ``NEBULA_BASE_URL``, then the
    public endpoint. ``timeout`` is seconds or a :class:`Timeout`. ``retry`` wins over
    ``max_retries``. ``session`` is a ClientSession you own: used as given, never closed by us.
    Use ``async with`` or ``await client.aclose()`` to release connections; a client nobody
    closed is closed quietly when it is collected, when its event loop shuts down
    (``asyncio.run()`` ends) or at exit. Calls run in one event loop; ``aclose()`` in any.

    ``proxy`` is an ``http://`` or ``https://`` proxy URL (credentials allowed, never shown); without
    it, ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` are read once, now. ``verify``:
    True checks the API's certificate against the system's CAs (or ``SSL_CERT_FILE``/``SSL_CERT_DIR``,
    read now); a path to a PEM CA bundle or c_rehash'd directory trusts only those CAs; an
    ``ssl.SSLContext`` is used as given; False turns verification off. ``trust_env=False`` ignores
    all those environment variables. ``proxy``, ``verify`` and ``trust_env`` can't be combined with
    ``session``: configure your session instead. Raises TypeError or ValueError for a bad proxy URL
    or CA bundle.

    ``rate_limit`` (a :class:`RateLimit`) paces every call, retries included, to the API's
    requests and tokens per minute, before it is sent. With or without it, a 429
    ``rate_limit_exceeded`` with Retry-After holds every call of the client until then. That wait
    is not part of a call's timeout.
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
        proxy: str | None = None,
        verify: Verify = True,
        trust_env: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        # First, before anything can raise: no frame of a traceback may hold the key as a str (error
        # trackers record locals). A Secret passed in is the sync client's, already wrapped.
        key = (
            api_key
            if isinstance(api_key, Secret)
            else Secret(api_key if api_key is not None else os.environ.get(ENV_API_KEY))
        )
        del api_key
        check_api_key(key)
        if base_url is not None:
            self._base_url = check_base_url(base_url, "base_url")
        elif os.environ.get(ENV_BASE_URL):
            self._base_url = check_base_url(os.environ[ENV_BASE_URL], ENV_BASE_URL)
        else:
            self._base_url = DEFAULT_BASE_URL
        self._timeout = Timeout.coerce(timeout)
        default_policy = RetryPolicy(max_retries=max_retries)  # checks max_retries even when retry wins
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._retry = retry if retry is not None else default_policy
        check_int("max_connections", max_connections, 1)
        if session is not None and not _is_client_session(session):
            raise TypeError(f"session must be an aiohttp.ClientSession, got {type(session).__name__}")
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be True or False, got {type(trust_env).__name__}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(
                f"rate_limit must be a RateLimit, e.g. RateLimit(requests_per_minute=600), "
                f"got {type(rate_limit).__name__}"
            )
        self._rate_limit = rate_limit
        # Only a tokens-per-minute limit needs each call's token estimate.
        self._counts_tokens = rate_limit is not None and rate_limit.tokens_per_minute is not None
        url = self._base_url + "/text/generate"
        if session is not None:
            _refuse_with_session(proxy=proxy is not None, verify=verify is not True, trust_env=not trust_env)
        # Here, not at import: what they import costs more than the rest of the package.
        from ._proxy import resolve_proxy
        from ._tls import resolve_verify

        # Decided once, now: a call never reads the environment.
        resolved_proxy = None if session is not None else resolve_proxy(url, proxy, trust_env=trust_env)
        ssl_setting = True if session is not None else resolve_verify(verify, trust_env=trust_env)
        if ssl_setting is False:
            logger.warning(
                "TLS certificate verification is off for this client (verify=False): anyone on the way "
                "to %s can read and change its traffic, the API key included",
                self._base_url,
            )
        self._calls = CallPath(
            url=url,
            headers=build_headers(key, default_headers),  # built once per client, not per call
            max_connections=max_connections,
            session=session,
            proxy=resolved_proxy,
            tls=ssl_setting,
            rate_limit=rate_limit,
        )
        clear_host = cleartext_host(self._base_url)  # last: a client that failed to build sends nothing
        if clear_host is not None:
            logger.warning(
                "the API key will travel unencrypted to %s: base_url is http://, not https://, and "
                "anyone on the way can read it",
                clear_host,
            )

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

    @property
    def rate_limit(self) -> RateLimit | None:
        """The limits every call of this client is paced to, or None (only the shared 429 gate)."""
        return self._rate_limit

    def __repr__(self) -> str:
        # getattr: a traceback printed with its locals shows the repr of a client whose __init__ raised.
        base_url, retry = getattr(self, "_base_url", None), getattr(self, "_retry", None)
        if base_url is None or retry is None:
            return "<AsyncNebulaClient (not built: its construction failed)>"
        return f"AsyncNebulaClient(base_url={base_url!r}, max_retries={retry.max_retries})"

    def __reduce__(self) -> NoReturn:
        # Without this, pickle fails deep inside with "cannot pickle 'weakref.ReferenceType' object".
        raise TypeError(
            "AsyncNebulaClient can't be pickled or copied: its connections belong to one process "
            "and event loop; "
            "create the client in the worker, e.g. in the process pool's initializer"
        )

    async def __aenter__(self) -> AsyncNebulaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (not a session you passed in) and open streams; idempotent.

        Works from any event loop: the connections are closed in the loop they belong to.
        """
        await self._calls.aclose()

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
        # Not kept in a local: the request is not needed once encoded, and this frame lives for the call.
        body = encode_request(
            GenerateRequest(model, prompt, max_tokens, temperature, top_p, stop), extra_body, stream=False
        )
        tokens = self._tokens_for(prompt, max_tokens) if self._counts_tokens else 0
        return await self._calls.run(
            self._policy(max_retries), body, self._timeout_for(timeout), _finish, tokens=tokens
        )

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
        body = encode_request(request, extra_body, stream=True)
        tokens = self._tokens_for(prompt, max_tokens) if self._counts_tokens else 0
        return TextStream(
            self._calls, body, self._policy(max_retries), self._timeout_for(timeout), tokens=tokens
        )

    @overload
    async def generate_many(
        self,
        requests: BatchInput,
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[TextGeneration]: ...

    @overload
    async def generate_many(
        self, requests: BatchInput, *, concurrency: int = ..., return_exceptions: bool
    ) -> list[TextGeneration | Exception]: ...

    async def generate_many(
        self,
        requests: BatchInput,
        *,
        concurrency: int = 16,
        return_exceptions: bool = False,
    ) -> list[TextGeneration] | list[TextGeneration | Exception]:
        """Run many generations, at most ``concurrency`` at once; results come in input order.

        ``requests`` holds GenerateRequest objects or dicts of generate_text's keywords (a list, a
        generator or an async generator). It is read lazily, only as fast as requests are sent, so a
        generator of millions of prompts never becomes millions of tasks. With ``return_exceptions``
        a failed item's exception stands in its place; otherwise the first failure cancels the
        rest and is raised.
        """
        check_int("concurrency", concurrency, 1)
        results: list[Any] = []
        async with self.as_completed(requests, concurrency=concurrency) as outcomes:
            async for outcome in outcomes:
                if outcome.error is not None and not return_exceptions:
                    raise outcome.error  # leaving the block cancels the calls still running
                missing = outcome.index + 1 - len(results)
                if missing > 0:
                    results.extend([None] * missing)
                results[outcome.index] = outcome.result if outcome.error is None else outcome.error
        return results

    def as_completed(self, requests: BatchInput, *, concurrency: int = 16) -> Completions:
        """Run many generations, at most ``concurrency`` at once; yield each Outcome as it completes.

        ``requests`` is read lazily as in generate_many. Each Outcome holds the item's 0-based
        ``index``, the item, and its ``result`` or its ``error`` (the errors generate_many's
        ``return_exceptions`` collects: NebulaError, ValueError, TypeError); any other exception
        ends the iteration. Use ``async with client.as_completed(...) as outcomes: async for outcome
        in outcomes: ...``: leaving the block early cancels the calls in flight.
        """
        check_int("concurrency", concurrency, 1)
        return Completions(
            ItemSource(requests), self._generate_item, concurrency=concurrency, calls=self._calls
        )

    async def run_batch(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        concurrency: int = 16,
        retry_failed: bool = False,
        fsync: bool = False,
        progress: Callable[[BatchProgress], None] | None = None,
        stop_event: threading.Event | None = None,
        grace_period: float = 10.0,
    ) -> BatchSummary:
        """Run every line of the JSONL file ``input``; append one result line per id to ``output``.

        Rerun it with the same files to resume: ids already in ``output`` are skipped (with
        ``retry_failed``, the failed ones are run again and their old lines removed). The model
        and parameters apply to lines that don't give their own. The whole input is checked
        first: BatchInputError lists its problems, and nothing is sent. ``progress`` is called
        with a BatchProgress after each line written and about twice a second, in the event loop
        (keep it quick). Once ``stop_event`` is set, or a job-wide error (InsufficientQuotaError,
        AuthenticationError, PermissionDeniedError) arrives, no new request starts and the ones
        in flight get ``grace_period`` seconds to finish; BatchSummary.stopped says why.
        ``fsync`` fsyncs the output at most once a second and at the end. The output must be a
        regular file other than the input (ValueError); a run holds a lock on it, so another run
        on it meanwhile raises BlockingIOError. The input and record formats are in the README's
        "Batch jobs" section.
        """
        defaults = check_batch_options(
            model,
            max_tokens,
            temperature,
            top_p,
            stop,
            concurrency,
            retry_failed,
            fsync,
            progress,
            stop_event,
            grace_period,
        )
        return await run_batch(
            self._calls,
            self._generate_item,
            os.fspath(input),
            os.fspath(output),
            defaults=defaults,
            concurrency=concurrency,
            retry_failed=retry_failed,
            fsync=fsync,
            progress=progress,
            stop_event=stop_event,
            grace_period=grace_period,
        )

    async def _generate_item(self, item: GenerateRequest | Mapping[str, Any]) -> TextGeneration:
        if isinstance(item, GenerateRequest):
            body = encode_request(item, None, stream=False)
            tokens = self._tokens_for(item.prompt, item.max_tokens) if self._counts_tokens else 0
            return await self._calls.run(self._retry, body, self._timeout, _finish, tokens=tokens)
        if isinstance(item, Mapping):
            return await self.generate_text(**item)
        raise TypeError(f"generate_many items must be GenerateRequest or dict, got {type(item).__name__}")

    def _tokens_for(self, prompt: str, max_tokens: int | None) -> int:
        """The tokens a call reserves under the tokens-per-minute limit; ValueError if it can never fit."""
        assert self._rate_limit is not None  # only called when _counts_tokens
        return self._rate_limit.estimate(prompt, max_tokens)

    def _policy(self, max_retries: int | None) -> RetryPolicy:
        if max_retries is None:
            return self._retry
        return attrs.evolve(self._retry, max_retries=max_retries)

    def _timeout_for(self, timeout: float | Timeout | None) -> Timeout:
        return self._timeout if timeout is None else Timeout.coerce(timeout)


async def _finish(transport: Transport, response: aiohttp.ClientResponse, number: int) -> TextGeneration:
    """Read and parse a non-streaming answer (attempt ``number``); CallPath.run retries on errors."""
    raw = await transport.read_body(response)
    result = generation_or_error(response.status, raw, response.headers)
    # Dropped before the error is raised: this frame stays in its traceback, and an error someone
    # keeps (a batch's failures, a log record's exc_info) must not keep a body of up to 64 MiB.
    del raw
    if isinstance(result, APIError):
        raise result
    text, usage = result
    return TextGeneration(text, usage, response.headers.get("x-request-id"), number - 1)


def _refuse_with_session(**given: bool) -> None:
    names = [f"{name}=" for name, passed in given.items() if passed]
    if names:
        raise TypeError(
            f"{', '.join(names)} can't be combined with session=: the SDK never reconfigures your session; "
            "configure it instead (aiohttp.ClientSession(proxy=..., trust_env=..., "
            "connector=aiohttp.TCPConnector(ssl=...)))"
        )


def _is_client_session(session: object) -> bool:
    import aiohttp  # only reached when a session is passed, which means aiohttp is loaded already

    return isinstance(session, aiohttp.ClientSession)
