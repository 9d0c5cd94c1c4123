"""Printing URLs safely: a store URL may carry a password (``postgresql://u:pw@host/db``)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, errors and start-up lines.

    Anything that does not parse as a URL is replaced whole: a string we cannot take apart
    could be the password itself.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = f"{parts.username or ''}:***@{host or ''}"
    if ":" in (host or ""):  # an IPv6 literal keeps its brackets
        netloc = f"{parts.username or ''}:***@[{host}]"
    if port is not None:
        netloc += f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))
