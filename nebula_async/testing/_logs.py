"""The fake server's loggers, and the filter that keeps API keys out of what aiohttp logs for it."""

from __future__ import annotations

import logging
import re
import traceback

__all__ = ["RedactCredentials", "logger", "server_logger"]

logger = logging.getLogger("nebula_async.testing")
logger.addHandler(logging.NullHandler())

# aiohttp logs a malformed request with its raw header line, Authorization included.
_CREDENTIALS = re.compile(r"(?i)(authorization\W{0,3}(?:bearer\W{0,3})?|bearer\W{1,3})[^\s'\"]+")


class RedactCredentials(logging.Filter):
    """Replace anything that looks like an Authorization value, in the message and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drop it."""
        record.msg = _CREDENTIALS.sub(r"\1<redacted>", record.getMessage())
        record.args = None
        if record.exc_info:
            formatted = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = _CREDENTIALS.sub(r"\1<redacted>", formatted).rstrip("\n")
            record.exc_info = None
        return True


server_logger = logging.getLogger("nebula_async.testing.server")  # what aiohttp.web logs for us
server_logger.addFilter(RedactCredentials())
