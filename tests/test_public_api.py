"""The public surface is pinned: a change to it is a deliberate, reviewed change."""

from __future__ import annotations

import subprocess
import sys

import contactmatch

EXPECTED = {
    "AuthenticationFailed", "BloomFilter", "Conflict", "ContactBook", "ContactMatchError",
    "DataKey", "Discoverability", "DiscoveryClient", "DiscoveryResult", "DiscoveryServer",
    "GolombFilter", "InvalidContactCard", "InvalidInput", "InvalidKey", "InvalidNumber",
    "KeyRing", "MalformedMessage", "MissingDependency", "Mode", "NormalizedBatch",
    "OprfClient", "OprfServer", "Quota", "RateLimited", "RateLimits", "RegistryStore",
    "SchemaVersionError", "Scheme", "ServerKey", "ServiceSettings", "StoreError",
    "StoreUnavailable", "TokenIndex", "UnknownKeyId", "UnknownScheme", "UnknownUser",
    "VerificationFailed", "__version__", "get_scheme", "load_contacts", "load_filter",
    "mask_number", "normalize", "normalize_many", "open_store", "scheme_names",
}  # fmt: skip


def test_exports_are_pinned_and_sorted() -> None:
    assert set(contactmatch.__all__) == EXPECTED
    assert contactmatch.__all__ == sorted(contactmatch.__all__)
    for name in contactmatch.__all__:
        assert hasattr(contactmatch, name), name


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
