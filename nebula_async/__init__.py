"""Asyncio-native SDK for the Nebula Block serverless text-generation API."""

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
from ._stream import TextStream
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncNebulaClient",
    "AuthenticationError",
    "ContextLengthExceededError",
    "GenerateRequest",
    "InsufficientQuotaError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NebulaError",
    "NotFoundError",
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
