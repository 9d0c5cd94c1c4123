"""The HTTP API (optional ``[server]`` extra): a Starlette app, its Python client, and uvicorn.

>>> from contactmatch.server import HttpServer, ServerThread, SignedTokens, create_app

Importing this package checks that the extra is installed (else
:class:`~contactmatch.errors.MissingDependency` names the ``pip install`` that fixes it) but
loads Starlette, uvicorn and httpx only when one of the names below is first used, so the
command line can build its ``serve`` options without paying for them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from contactmatch.errors import MissingDependency

for _module in ("starlette", "uvicorn", "httpx"):
    # find_spec locates without importing (and returns None for a module blocked in
    # sys.modules), so the check costs no start-up time.
    if importlib.util.find_spec(_module) is None:
        raise MissingDependency("server", _module)

if TYPE_CHECKING:
    from contactmatch.server._codes import ApiError
    from contactmatch.server.app import create_app
    from contactmatch.server.auth import Authenticator, SignedTokens, derive_token_secret
    from contactmatch.server.client import HttpServer
    from contactmatch.server.serve import ServerThread, run

__all__ = [
    "ApiError",
    "Authenticator",
    "HttpServer",
    "ServerThread",
    "SignedTokens",
    "create_app",
    "derive_token_secret",
    "run",
]

_HOME = {
    "ApiError": "contactmatch.server._codes",
    "Authenticator": "contactmatch.server.auth",
    "HttpServer": "contactmatch.server.client",
    "ServerThread": "contactmatch.server.serve",
    "SignedTokens": "contactmatch.server.auth",
    "create_app": "contactmatch.server.app",
    "derive_token_secret": "contactmatch.server.auth",
    "run": "contactmatch.server.serve",
}


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (PEP 562)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
