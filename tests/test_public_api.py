"""The public surface is pinned: a change to it is a deliberate, reviewed change."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import contactmatch

EXPECTED = {
    "AuthenticationFailed", "ContactMatchError", "DataKey", "Discoverability",
    "DiscoveryClient", "DiscoveryResult", "DiscoveryServer", "InvalidInput", "InvalidNumber",
    "KeyRing", "MalformedMessage", "Mode", "RateLimited", "RateLimits", "Scheme", "ServerKey",
    "ServiceSettings", "StoreUnavailable", "UnknownKeyId", "UnknownUser", "VerificationFailed",
    "__version__", "get_scheme", "load_contacts", "normalize", "normalize_many", "open_store",
    "scheme_names",
}  # fmt: skip

# The parts stay in their modules: importable there, absent from the top level.
IN_SUBMODULES = {
    "contactmatch.filters": ["BloomFilter", "Filter", "GolombFilter", "load_filter"],
    "contactmatch.index": ["TokenIndex", "MemoryTokens", "TokenFile"],
    "contactmatch.oprf": ["OprfClient", "OprfServer"],
    "contactmatch.errors": ["Conflict", "InvalidKey", "ProtocolStateError", "UnknownScheme"],
    "contactmatch.schemes": ["SchemeClient", "SchemeServer", "make_server_tokens"],
    "contactmatch.stores": ["RegistryStore"],
    "contactmatch.service": [
        "DEFAULT_SCHEMES", "DiscoveryClient", "DiscoveryResult", "DiscoveryServer",
        "NumberVerifier", "ServiceSettings",
    ],
}  # fmt: skip


def test_exports_are_pinned_and_sorted() -> None:
    assert set(contactmatch.__all__) == EXPECTED
    assert contactmatch.__all__ == sorted(contactmatch.__all__)
    for name in contactmatch.__all__:
        assert hasattr(contactmatch, name), name


@pytest.mark.parametrize("module", sorted(IN_SUBMODULES))
def test_parts_stay_in_their_modules(module: str) -> None:
    mod = importlib.import_module(module)
    for name in IN_SUBMODULES[module]:
        assert hasattr(mod, name), f"{module}.{name}"
        if module != "contactmatch.service" and name not in EXPECTED:
            assert name not in contactmatch.__all__
            assert not hasattr(contactmatch, name), f"contactmatch.{name} is not the product's"


def test_import_loads_no_driver_and_no_web_stack() -> None:
    code = (
        "import sys, contactmatch\n"
        "heavy = {'psycopg', 'psycopg_pool', 'redis', 'starlette', 'uvicorn', 'httpx'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_py_typed_is_shipped() -> None:
    from importlib import resources

    assert (resources.files("contactmatch") / "py.typed").is_file()
