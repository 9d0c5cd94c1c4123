"""The HTTP API: a Starlette app (``[server]`` extra), its Python client (``[client]`` extra:
httpx and stamina), and uvicorn.

>>> from contactmatch.server import HttpClient, ServerThread, SignedTokens, create_app

Importing this package costs nothing and needs no extra: each name loads its module on first
use (PEP 562), after checking that the extra it needs is installed, so a missing one is a
:class:`~contactmatch.errors.MissingDependency` naming the ``pip install`` that fixes it.
The client therefore works where only httpx and stamina are installed, and the command
line builds its ``serve`` options without paying for Starlette.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

from contactmatch.errors import MissingDependency

if TYPE_CHECKING:
    from contactmatch.errors import ApiError
    from contactmatch.server.app import create_app
    from contactmatch.server.auth import (
        Authenticator,
        SignedTokens,
        StaticToken,
        derive_token_secret,
    )
    from contactmatch.server.client import HttpClient

    HttpServer = HttpClient  # deprecated alias: at run time __getattr__ warns
    from contactmatch.server.serve import ServerThread, run

__all__ = [
    "ApiError",
    "Authenticator",
    "HttpClient",
    "ServerThread",
    "SignedTokens",
    "StaticToken",
    "create_app",
    "derive_token_secret",
    "run",
]

#: What each extra brings that this package imports (pyproject.toml's optional dependencies).
_EXTRAS = {
    "client": ("httpx", "stamina"),
    "server": ("starlette", "pydantic", "uvicorn", "prometheus_client"),
}
#: Each exported name: its module and the extra it needs (None: the core library only).
_HOME: dict[str, tuple[str, str | None]] = {
    "ApiError": ("contactmatch.errors", None),
    "Authenticator": ("contactmatch.server.auth", None),
    "HttpClient": ("contactmatch.server.client", "client"),
    "ServerThread": ("contactmatch.server.serve", "server"),
    "SignedTokens": ("contactmatch.server.auth", None),
    "StaticToken": ("contactmatch.server.auth", None),
    "create_app": ("contactmatch.server.app", "server"),
    "derive_token_secret": ("contactmatch.server.auth", None),
    "run": ("contactmatch.server.serve", "server"),
}


def require_extra(extra: str) -> None:
    """Check that an extra's modules are installed, without importing them.

    Raises:
        MissingDependency: naming the first missing module and ``pip install
            'contactmatch[extra]'``.
    """
    for module in _EXTRAS[extra]:
        # find_spec locates without importing (and returns None for a module blocked in
        # sys.modules), so the check costs no start-up time.
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(extra, module)


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (PEP 562)."""
    if name == "HttpServer":  # the client's old name, deprecated
        warnings.warn(
            "HttpServer is deprecated; use HttpClient (the same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        require_extra("client")
        return importlib.import_module("contactmatch.server.client").HttpClient
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = home
    if extra is not None:
        require_extra(extra)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
