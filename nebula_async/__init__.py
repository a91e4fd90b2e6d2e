"""Asyncio-native SDK for the Nebula Block serverless text-generation API."""

from ._batch import Outcome
from ._batchfile import BatchInputError
from ._client import AsyncNebulaClient
from ._config import RetryPolicy, Timeout
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ContextLengthExceededError,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NebulaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from ._limit import RateLimit
from ._models import GenerateRequest, TextChunk, TextGeneration, Usage
from ._runner import BatchProgress, BatchSummary
from ._stream import TextStream
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncNebulaClient",
    "AuthenticationError",
    "BatchInputError",
    "BatchProgress",
    "BatchSummary",
    "ContextLengthExceededError",
    "GenerateRequest",
    "InsufficientQuotaError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NebulaError",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "TextChunk",
    "TextGeneration",
    "TextStream",
    "Timeout",
    "Usage",
    "__version__",
]
