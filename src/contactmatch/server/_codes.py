"""Stable error codes of the HTTP API, shared by the app (exception -> code) and the client
(code -> exception).

Imports neither starlette, httpx nor pydantic: the client (httpx only) and the app (no
httpx) both load it, so a code can never mean one thing on one side and another on the other.
"""

from __future__ import annotations

import math
from typing import Any

from contactmatch.errors import (
    ApiError,
    AuthenticationFailed,
    Conflict,
    ContactMatchError,
    InvalidInput,
    InvalidNumber,
    MalformedMessage,
    RateLimited,
    StoreUnavailable,
    UnknownKeyId,
    UnknownScheme,
    UnknownUser,
    VerificationFailed,
)

__all__ = [
    "BINARY",
    "ERROR_CODES",
    "JSON",
    "USER_HEADER",
    "error_body",
    "exception_for",
    "status_and_code",
]

BINARY = "application/octet-stream"
JSON = "application/json"
#: Optional request header naming the user the client believes it is acting for; a mismatch
#: with the token's user is refused (403), so a mixed-up token is caught, not obeyed.
USER_HEADER = "X-Contactmatch-User"


# Most specific first: the first class an exception is an instance of decides its code.
ERROR_CODES: tuple[tuple[type[ContactMatchError], int, str], ...] = (
    (InvalidNumber, 400, "invalid_number"),
    (MalformedMessage, 400, "malformed_message"),
    (InvalidInput, 400, "invalid_input"),
    (VerificationFailed, 400, "verification_failed"),
    (AuthenticationFailed, 401, "authentication_failed"),
    (UnknownUser, 404, "unknown_user"),
    (UnknownScheme, 404, "unknown_scheme"),
    (UnknownKeyId, 409, "unknown_key_id"),
    (Conflict, 409, "conflict"),
    (RateLimited, 429, "rate_limited"),
    (StoreUnavailable, 503, "store_unavailable"),
)

#: Codes that have no exception class of their own and what the client raises for them.
_CLIENT_ONLY: dict[str, type[ContactMatchError]] = {
    "forbidden": AuthenticationFailed,
    "payload_too_large": InvalidInput,
    "unsupported_media_type": InvalidInput,
}

INTERNAL_MESSAGE = "internal server error"


def status_and_code(exc: BaseException) -> tuple[int, str]:
    """HTTP status and stable code for an exception (``internal`` 500 for anything unknown)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    for cls, status, code in ERROR_CODES:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and extra headers of the error response for ``exc``.

    Library exceptions carry masked, user-facing messages and are passed on; any other
    exception becomes ``internal`` with a fixed message, so its text never leaves the server.
    """
    status, code = status_and_code(exc)
    message = INTERNAL_MESSAGE if code == "internal" else str(exc)
    error: dict[str, Any] = {"code": code, "message": message}
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        error["retry_after"] = exc.retry_after
        error["quota"] = exc.quota
        # Retry-After takes whole seconds; rounding down would invite an early retry.
        headers["Retry-After"] = str(math.ceil(exc.retry_after))
    elif isinstance(exc, InvalidNumber):
        error["reason"] = exc.reason
    elif isinstance(exc, AuthenticationFailed):
        headers["WWW-Authenticate"] = 'Bearer realm="contactmatch"'
    return status, {"error": error}, headers


def exception_for(status: int, body: Any) -> ContactMatchError:
    """The typed exception a client raises for an error response.

    Args:
        status: the HTTP status.
        body: the decoded JSON body (anything: a proxy may answer with HTML).

    Returns:
        The most specific library exception; :class:`ApiError` when the code is unknown.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return ApiError(status, "internal", f"HTTP {status} without an error body")
    code: str = error["code"]
    message = str(error.get("message", code))[:500]
    if code == "rate_limited":
        retry = error.get("retry_after")
        retry_after = float(retry) if isinstance(retry, int | float) else 1.0
        # RateLimited appends "(retry after Ns)" itself; the server's message already has it.
        message = message.split(" (retry after", 1)[0]
        return RateLimited(message, retry_after=retry_after, quota=str(error.get("quota", "")))
    if code == "invalid_number":
        return InvalidNumber(str(error.get("reason", "invalid")))
    for cls, _status, known in ERROR_CODES:
        if code == known:
            return cls(message)
    if code in _CLIENT_ONLY:
        return _CLIENT_ONLY[code](message)
    return ApiError(status, code, message)
