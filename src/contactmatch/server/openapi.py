"""The OpenAPI 3.1 document, generated from the route table that is actually mounted.

Schemas come from the pydantic models the routes validate with and answer from
(:mod:`contactmatch.server.models`), as JSON Schema 2020-12 (OpenAPI 3.1's dialect) under
``components/schemas``; request bodies in pydantic's validation form, answers in its
serialisation form. Nothing here is written by hand per route except prose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from contactmatch._version import __version__
from contactmatch.server._codes import JSON, USER_HEADER
from contactmatch.server.models import ErrorAnswer
from contactmatch.server.routing import Endpoint

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")
_STATUS_TEXT = {
    304: "the filter named by If-None-Match is current",
    400: "malformed_message, invalid_input, invalid_number or verification_failed",
    401: "authentication_failed: missing, forged or expired bearer token, or its account is "
    "not registered (deleted)",
    403: "forbidden: possession of the number was not proven, the token names another user, "
    "or no admin authenticator",
    404: "unknown_scheme or unknown_user",
    409: "unknown_key_id (refresh /v1/info and retry) or conflict (development servers "
    "without a number verifier only: the number belongs to another account)",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited: see Retry-After",
    500: "internal: anything unexpected (the log has its type and frames only)",
    503: "store_unavailable",
}
_BINARY_SCHEMA = {"type": "string", "format": "binary"}


def openapi_document(
    endpoints: Sequence[Endpoint[Any, Any]], path_parameters: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The OpenAPI document of ``endpoints``.

    Args:
        endpoints: the routes mounted (the number endpoints only when they are served).
        path_parameters: documentation of each ``{name}`` used in a path.
    """
    refs, components = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, refs, path_parameters)
    return {
        "openapi": "3.1.0",
        "info": {"title": "contactmatch discovery API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
    }


#: (model, mode) -> the ``$ref`` of its schema.
Refs = dict[tuple[type, JsonSchemaMode], dict[str, Any]]


def _schemas(endpoints: Sequence[Endpoint[Any, Any]]) -> tuple[Refs, dict[str, Any]]:
    """Every model the routes use, once, as components; and the reference to each."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorAnswer, "serialization"): None
    }
    for ep in endpoints:
        for models in ep.body.content().values():
            wanted.update(((m, "validation"), None) for m in models)
        for models in ep.answer.content.values():
            wanted.update(((m, "serialization"), None) for m in models)
    refs, top = models_json_schema(list(wanted), ref_template=_REF)
    return dict(refs.items()), dict(top.get("$defs", {}))


def _content(
    content: dict[str, tuple[type[BaseModel], ...]], refs: Refs, mode: JsonSchemaMode
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for media, models in content.items():
        if not models:
            out[media] = {"schema": _BINARY_SCHEMA}
        elif len(models) == 1:
            out[media] = {"schema": refs[(models[0], mode)]}
        else:
            out[media] = {"schema": {"oneOf": [refs[(m, mode)] for m in models]}}
    return out


def _operation(
    ep: Endpoint[Any, Any], refs: Refs, path_parameters: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": ep.answer.description}
    if ep.answer.content:
        ok["content"] = _content(ep.answer.content, refs, "serialization")
    if ep.answer.headers:
        ok["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in ep.answer.headers.items()
        }
    responses: dict[str, Any] = {str(ep.answer.status): ok}
    error = {"schema": refs[(ErrorAnswer, "serialization")]}
    for status in (*ep.errors, 500, 503):
        entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "error")}
        if status != 304:
            entry["content"] = {JSON: error}
        responses[str(status)] = entry
    parameters = [
        {"name": name, "in": "path", "required": True, **path_parameters[name]}
        for name in _PATH_PARAM.findall(ep.path)
    ]
    parameters += _query_parameters(ep.query.model)
    parameters += [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
         "description": text}
        for name, text in ep.headers.items()
    ]  # fmt: skip
    op: dict[str, Any] = {
        "operationId": ep.name,
        "summary": ep.summary,
        "parameters": parameters,
        "responses": responses,
    }
    if ep.auth != "none":
        op["security"] = [{"bearer": []}]
        parameters.append(
            {
                "name": USER_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "user id the client expects the token to name; a mismatch is "
                "refused with 403",
            }
        )
    body = ep.body.content()
    if body:
        op["requestBody"] = {"required": True, "content": _content(body, refs, "validation")}
    return op


def _query_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    """One query parameter per field of the route's query model."""
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", ()))
    out = []
    for name, declared in schema.get("properties", {}).items():
        prop = dict(declared)
        description = prop.pop("description", "")
        prop.pop("title", None)
        # An optional parameter is absent, never null: document the value it takes.
        branches = [s for s in prop.get("anyOf", ()) if s != {"type": "null"}]
        if len(branches) == 1:
            del prop["anyOf"]
            prop.update(branches[0])
            if prop.get("default", 0) is None:
                del prop["default"]
        out.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
                "description": description,
            }
        )
    return out
