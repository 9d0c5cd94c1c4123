"""The HTTP API's bodies, queries and answers as pydantic models.

One definition does three jobs, so they cannot drift apart: it validates what a client sent
(after the strict JSON loader has refused anything hostile), it builds what the server
answers (a handler cannot return a field the document does not list), and it generates the
schemas of the OpenAPI document. The JSON form of the wire messages is documented by models
derived mechanically from the wire dataclasses; decoding stays with
:func:`~contactmatch.schemes.wire.decode_json`, which owns the ``malformed_message`` code.

Validation errors are rewritten into the library's :class:`~contactmatch.errors.InvalidInput`
with messages built from the error *kind* and the *declared* field name only: pydantic's own
messages quote the input (a phone number, a token) and an unknown key may be anything.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final, Literal, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_core import ErrorDetails

from contactmatch._json import load_json
from contactmatch.errors import InvalidInput
from contactmatch.schemes.wire import (
    WIRE_VERSION,
    BucketRequest,
    ContactsUpload,
    EvalRequest,
    LookupRequest,
    Message,
    PirRequest,
    ServiceResponse,
)
from contactmatch.stores.base import Discoverability

__all__ = [
    "WIRE_JSON",
    "ClaimAnswer",
    "ErrorAnswer",
    "FilterQuery",
    "KeptAnswer",
    "NumberBody",
    "OpenApiAnswer",
    "RegisterBody",
    "SchemesAnswer",
    "ServerInfoAnswer",
    "SettingsAnswer",
    "SettingsBody",
    "StatsAnswer",
    "parse_body",
    "validate",
    "wire_json_model",
]

M = TypeVar("M", bound=BaseModel)

# -- requests --------------------------------------------------------------------------------


class _Body(BaseModel):
    """A request body: unknown fields refused, no type coercion (``5`` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


#: A setting in JSON is its string value; Strict(False) lets exactly those strings become the
#: enum (strict mode alone would want an enum instance, which JSON cannot carry).
Setting = Annotated[Discoverability, Strict(False)]
_NUMBER = "phone number as the user wrote it (E.164, or local with region)"
_REGION = "ISO 3166 region for a number written without +CC; the server's default if absent"
_PROOF = (
    "proof of possession of the number (e.g. the SMS code the messenger sent), checked by the "
    "server's number verifier against the normalised E.164 number; needed for every "
    "registration and number change"
)


class RegisterBody(_Body):
    """``POST /v1/register``: the number to register the token's user with."""

    number: str = Field(description=_NUMBER)
    region: str | None = Field(default=None, description=_REGION)
    discoverability: Setting | None = Field(
        default=None, description="setting of a new account (everyone if absent)"
    )
    proof: str | None = Field(default=None, description=_PROOF)


class NumberBody(_Body):
    """``PUT /v1/number``: the new number of the token's (registered) user."""

    number: str = Field(description=_NUMBER)
    region: str | None = Field(default=None, description=_REGION)
    proof: str | None = Field(default=None, description=_PROOF)


class SettingsBody(_Body):
    """``PUT /v1/settings``: who may discover the token's user."""

    discoverability: Setting = Field(description="who may discover the account by its number")


class FilterQuery(BaseModel):
    """Query of ``GET /v1/filter/{scheme}``; other parameters (cache busters) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    since: int | None = Field(
        default=None,
        ge=0,
        lt=1 << 64,
        description="filter version the client holds; answered with a delta when the server "
        "still has the history, else with the whole filter",
    )

    @field_validator("since", mode="before")
    @classmethod
    def _plain_digits(cls, raw: object) -> object:
        # int() takes " 1", "+1" and "1_0", and str.isdigit() takes "²": only ASCII digits
        # name a version. The length cap keeps a 5,000-digit value away from int().
        if isinstance(raw, str) and not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
            raise ValueError("since must be a non-negative integer")
        return raw


# -- answers ---------------------------------------------------------------------------------


class _Answer(BaseModel):
    """A JSON answer: every field it may hold is declared (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SchemesAnswer(_Answer):
    """``GET /v1/schemes``."""

    schemes: list[str] = Field(description="scheme names, the default first")


class ServerInfoAnswer(_Answer):
    """``GET /v1/info/{scheme}``: what a client needs before discovering with a scheme."""

    scheme: str
    key_id: str = Field(description="id of the key tokens are under; sent back in requests")
    bits: int = Field(ge=0, le=32, description="bucket prefix length (bucket schemes)")
    public_key: str = Field(
        pattern="^([0-9a-f]{2})*$", description="hex; VOPRF servers publish their key"
    )
    filter_version: int = Field(ge=0, description="version of the published filter; 0: none")
    extra: dict[str, Any] = Field(description="scheme-specific parameters")


class KeptAnswer(_Answer):
    """``POST /v1/contacts``."""

    kept: int = Field(ge=0, description="distinct tokens kept")


class ClaimAnswer(_Answer):
    """``POST /v1/register`` and ``PUT /v1/number``."""

    user_id: str
    number: str = Field(description="the normalised E.164 number now on the account")


class SettingsAnswer(_Answer):
    """``PUT /v1/settings``."""

    discoverability: Discoverability


class HealthAnswer(_Answer):
    """``GET /healthz``: the process answers (nothing else is checked)."""

    status: Literal["ok"]


class ReadyAnswer(_Answer):
    """``GET /readyz``: the store answered, the keys and the registry are loaded.

    Counts and positions only: no key id, user id or number.
    """

    status: Literal["ready"]
    keys: int = Field(description="OPRF keys served (more than one during a rotation)")
    users: int = Field(description="users in the served registry")
    feed_sequence: int = Field(description="store change-feed position the registry reflects")
    feed_lag: int = Field(description="changes in the store's feed not applied yet")
    started_from: Literal["snapshot", "store"]


class StatsAnswer(RootModel[dict[str, int]]):
    """``GET /v1/stats``: aggregate counters (never per user)."""


class OpenApiAnswer(RootModel[dict[str, Any]]):
    """``GET /openapi.json``: this document."""


class ErrorDetail(_Answer):
    """What went wrong: a stable ``code`` (see docs/http.md) and a masked message."""

    code: str
    message: str
    retry_after: float | None = Field(default=None, description="rate_limited: seconds")
    quota: str | None = Field(default=None, description="rate_limited: which quota")
    reason: str | None = Field(default=None, description="invalid_number: why")


class ErrorAnswer(_Answer):
    """Every error answer (the app builds it in :func:`contactmatch.server._codes.error_body`,
    which the client shares, so this model documents it and a test holds the two together)."""

    error: ErrorDetail


# -- the JSON form of wire messages ------------------------------------------------------------

_BASE64 = Annotated[str, Field(json_schema_extra={"contentEncoding": "base64"})]
_UINT = Annotated[int, Field(ge=0)]
#: Wire field types (as the dataclasses spell them) and their JSON form (Message.to_json).
_JSON_FORM: Final[dict[str, Any]] = {
    "str": str,
    "int": _UINT,
    "bytes": _BASE64,
    "list[int]": list[_UINT],
    "list[bytes]": list[_BASE64],
}
_literal = cast(Any, Literal)  # a Literal built from values at run time


def wire_json_model(cls: type[Message]) -> type[BaseModel]:
    """A model of ``cls.to_json()``: ``v``, ``type`` and every field, bytes as base64.

    Derived from the dataclass fields, so a new field is documented the day it is added; a
    field type this table does not know fails here, at import, instead of being left out.
    """
    fields: dict[str, Any] = {
        "v": (_literal[WIRE_VERSION], Field(description="wire version")),
        "type": (_literal[cls.NAME], Field(description="message type")),
    }
    for f in dataclasses.fields(cls):
        kind = _JSON_FORM.get(str(f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no JSON form for {f.type!r}")
        if f.name == "bits":
            kind = Annotated[int, Field(ge=0, le=32)]
        fields[f.name] = (kind, ...)
    model = create_model(
        f"{cls.__name__}Json",
        __config__=ConfigDict(extra="forbid", title=f"{cls.__name__} (JSON form)"),
        __doc__=(cls.__doc__ or cls.__name__).split("\n\n")[0].strip(),
        **fields,
    )
    return cast("type[BaseModel]", model)


#: The wire messages that cross the HTTP API, by role, as JSON-form models.
WIRE_JSON: Final[dict[type[Message], type[BaseModel]]] = {
    cls: wire_json_model(cls)
    for cls in (
        EvalRequest,
        LookupRequest,
        BucketRequest,
        PirRequest,
        ServiceResponse,
        ContactsUpload,
    )
}


# -- validation ------------------------------------------------------------------------------

_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})
_RANGE = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _message(model: type[BaseModel], error: ErrorDetails, what: str) -> str:
    """A message for one validation error that names only declared fields, never the input."""
    kind = error["type"]
    if kind in _NOT_AN_OBJECT:
        return f"{what} must be a JSON object"
    if kind == "extra_forbidden":
        # The stray key itself is not echoed: it may be anything the client had at hand.
        return f"unknown field in {what} (expected {', '.join(model.model_fields)})"
    loc = error["loc"]
    name = loc[0] if loc and loc[0] in model.model_fields else None
    if name is None:
        return f"{what} is invalid"
    if kind == "missing":
        return f"missing field {name!r}"
    if kind == "value_error":  # our own validators' messages, which quote nothing
        return str(error.get("ctx", {}).get("error", f"{name} is invalid"))
    if kind == "enum":
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{name} must be one of: {expected}"
    if kind in _RANGE:
        return f"{name} is out of range"
    if kind.endswith("_type"):
        return f"field {name!r} must be a {kind.removesuffix('_type')}"
    return f"field {name!r} is invalid"


def validate(model: type[M], data: Any, what: str = "body") -> M:
    """Validate parsed data with ``model``.

    Raises:
        InvalidInput: naming the first problem without quoting the input (400
            ``invalid_input``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        # from None: the ValidationError's own text quotes the input.
        raise InvalidInput(_message(model, errors[0], what)) from None


def parse_body(model: type[M], raw: bytes) -> M:
    """Parse a JSON body strictly, then validate it.

    The strict loader comes first so that deep nesting, huge integers, lone surrogates,
    ``NaN`` and repeated keys are all a 400 before any model sees the value.

    Raises:
        InvalidInput: the body is not acceptable JSON, or not a valid ``model``.
    """
    return validate(model, load_json(raw), "body")
