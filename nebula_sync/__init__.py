"""Blocking SDK for the Nebula Block text-generation API, driving nebula_async in a background thread."""

from nebula_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ContextLengthExceededError,
    GenerateRequest,
    InsufficientQuotaError,
    InvalidRequestError,
    ModelNotFoundError,
    NebulaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimit,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextChunk,
    TextGeneration,
    Timeout,
    Usage,
    __version__,
)

from ._client import NebulaClient
from ._stream import TextStream

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ContextLengthExceededError",
    "GenerateRequest",
    "InsufficientQuotaError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NebulaClient",
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
