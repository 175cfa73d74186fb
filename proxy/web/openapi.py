"""The OpenAPI 3.1 document of the proxy's own surface and its cached routes, served as
`/openapi.json` so clients, gateways and schemathesis can check the contract (SPEC section 2).

Passthrough is not described: every other path and method goes to Lunary unchanged, and Lunary's
own API is Lunary's to describe. Built once at import; the served bytes never change at run time.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy import __version__
from proxy.web.server import MAX_HEADER_BYTES

# The usual spellings of one UUID: any case, optional braces, optional hyphens. Postgres also
# takes a hyphen after any group of four hex digits (and percent-encoded braces), which the
# description says: a pattern for all of them defeats schema-driven generators.
HEX = "[0-9A-Fa-f]"
RUN_ID_PATTERN = rf"^\{{?{HEX}{{8}}-?{HEX}{{4}}-?{HEX}{{4}}-?{HEX}{{4}}-?{HEX}{{12}}\}}?$"
JSON = "application/json"
STRING = {"type": "string"}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_response(description: str, schema: dict[str, Any], **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _proxy_error(description: str, **headers: Any) -> dict[str, Any]:
    return _json_response(description, _ref("schemas", "ProxyError"), **headers)


CACHE_HEADERS = {
    "X-Cache": _ref("headers", "XCache"),
    "Cache-Status": _ref("headers", "CacheStatus"),
    "X-Request-ID": _ref("headers", "XRequestId"),
}


def _with_retry_after(response: dict[str, Any]) -> dict[str, Any]:
    response["headers"] = {
        **response.get("headers", {}),
        "Retry-After": {"description": "Seconds to wait.", "schema": STRING},
    }
    return response


def _cached_read(summary: str, body_schema: dict[str, Any], *, head: bool) -> dict[str, Any]:
    """One operation of a cached route: GET answers a body, HEAD the same headers without it."""

    def answered(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        if head:
            return {"description": description, "headers": CACHE_HEADERS}
        return _json_response(description, schema, **CACHE_HEADERS)

    fresh_headers = {
        **CACHE_HEADERS,
        "ETag": _ref("headers", "ETag"),
        "Age": _ref("headers", "Age"),
    }
    ok = answered("From the cache (HIT, STALE) or from Lunary (MISS, BYPASS).", body_schema)
    ok["headers"] = fresh_headers
    return {
        "summary": summary + (" (headers only)" if head else ""),
        "operationId": ("head" if head else "get") + summary.replace(" ", ""),
        "tags": ["cached"],
        "parameters": [
            _ref("parameters", "RunId"),
            _ref("parameters", "ProjectId"),
            _ref("parameters", "CacheControl"),
            _ref("parameters", "IfNoneMatch"),
            _ref("parameters", "RequestId"),
        ],
        "security": [{}, {"LunaryBearer": []}, {"LunaryApiKey": []}],
        "responses": {
            "200": ok,
            "304": {
                "description": "The client's If-None-Match matches the ETag.",
                "headers": {**CACHE_HEADERS, "ETag": _ref("headers", "ETag")},
            },
            "400": answered("The path holds a dot segment, an encoded slash, a backslash, a "
                            "control character or a percent-encoding that is not UTF-8; a "
                            "header value is not UTF-8; Connection names Authorization or "
                            "X-API-Key; a header carries PROXY_ADMIN_TOKEN; or the request is "
                            "not valid HTTP/1.1.", _ref("schemas", "ProxyError")),
            "401": answered("Lunary refused the credential (never stored).",
                            _ref("schemas", "LunaryError")),
            "403": answered("Lunary refused the credential (never stored).",
                            _ref("schemas", "LunaryError")),
            "404": answered("Lunary has no such run for this credential (kept briefly per scope).",
                            _ref("schemas", "LunaryError")),
            "429": _with_retry_after(answered(
                "Lunary's rate limit (its body is text), or the proxy's cooldown after one.",
                {"anyOf": [_ref("schemas", "ProxyError"), {"type": "string"}]})),
            "431": answered(f"The request line and headers exceed {MAX_HEADER_BYTES // 1024} KiB.",
                            _ref("schemas", "ProxyError")),
            "502": answered("Lunary could not be reached and nothing stale could be served.",
                            _ref("schemas", "ProxyError")),
            "503": answered("The proxy is starting or stopping.", _ref("schemas", "ProxyError")),
            "504": answered("Lunary did not answer in time and nothing stale could be served.",
                            _ref("schemas", "ProxyError")),
            "default": {"description": "Any other answer of Lunary's (a 5xx, say), relayed as it "
                                       "came and never stored."},
        },
    }  # fmt: skip


RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A run as Lunary answers it, byte for byte.",
    "properties": {"id": {"type": "string"}, "status": {"type": ["string", "null"]}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "lunary-cache-proxy",
        "version": __version__,
        "description": (
            "A caching read-through proxy for the run endpoints of the Lunary API. Reads of a "
            "run and of its related runs are cached per credential scope. Every path and method "
            "not listed here is passed through to Lunary unchanged (PROXY_PASSTHROUGH), except "
            "`/admin...` and `/openapi.json`, which are never forwarded."
        ),
    },
    "paths": {
        "/v1/runs/{id}": {
            "get": _cached_read("Read a run", RUN_SCHEMA, head=False),
            "head": _cached_read("Read a run", RUN_SCHEMA, head=True),
        },
        "/v1/runs/{id}/related": {
            "get": _cached_read(
                "Read related runs", {"type": "array", "items": RUN_SCHEMA}, head=False
            ),
            "head": _cached_read("Read related runs", {}, head=True),
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while the process serves; never depends on Redis",
                "operationId": "health",
                "tags": ["operations"],
                "responses": {
                    "200": _json_response("Serving.", _ref("schemas", "Status")),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 when the store answers",
                "operationId": "readiness",
                "tags": ["operations"],
                "responses": {
                    "200": _json_response("The store answers.", _ref("schemas", "Status")),
                    "503": _proxy_error("The store does not answer (the reason says why)."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["operations"],
                "responses": {"200": _json_response("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/admin/cache/runs/{id}": {
            "delete": {
                "summary": "Drop every cached entry of a run (all scopes, both routes)",
                "operationId": "purgeRun",
                "tags": ["admin"],
                "parameters": [_ref("parameters", "RunId")],
                "security": [{"AdminBearer": []}],
                "responses": {
                    "200": _json_response("Dropped.", _ref("schemas", "Purged")),
                    "400": _proxy_error("The run id is not a UUID."),
                    "401": _proxy_error(
                        "No bearer token.",
                        **{"WWW-Authenticate": {"schema": {"type": "string"}}},
                    ),
                    "403": _proxy_error("The bearer token is not PROXY_ADMIN_TOKEN."),
                    "404": _proxy_error("The admin API is off (no PROXY_ADMIN_TOKEN)."),
                    "503": _proxy_error("The store did not answer; nothing was dropped."),
                },
            }
        },
    },
    "components": {
        "schemas": {
            "ProxyError": {
                "type": "object",
                "description": "An answer the proxy made itself, shaped like Lunary's errors.",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "LunaryError": {
                "type": "object",
                "description": "An error answered by Lunary, relayed or replayed as it was.",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
            },
            "Status": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            },
            "Purged": {
                "type": "object",
                "required": ["run_id", "invalidated"],
                "properties": {
                    "run_id": {"type": "string", "format": "uuid"},
                    "invalidated": {"const": True},
                },
            },
        },
        "parameters": {
            "RunId": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": (
                    "A run id: any spelling of a UUID that Postgres accepts (any case, braces, "
                    "hyphens after any group of four hex digits, or none); every spelling "
                    "shares one cache entry."
                ),
                "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
            },
            "ProjectId": {
                "name": "projectId",
                "in": "query",
                "required": False,
                "description": (
                    "The project a dashboard token reads (Lunary checks it); part of the key."
                ),
                "schema": {"type": "string"},
            },
            "CacheControl": {
                "name": "Cache-Control",
                "in": "header",
                "required": False,
                "description": (
                    "`no-cache` or `max-age=0` refetches; `no-store` skips the cache; other "
                    "directives are ignored."
                ),
                "schema": {"type": "string", "examples": ["no-cache", "max-age=0", "no-store"]},
            },
            "IfNoneMatch": {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": (
                    "Kept when it is a single short token, else replaced by a new one; the "
                    "response always carries the one used."
                ),
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "XCache": {
                "description": "HIT, MISS, STALE or BYPASS.",
                "schema": {"type": "string", "enum": ["HIT", "MISS", "STALE", "BYPASS"]},
            },
            "CacheStatus": {
                "description": "RFC 9211, e.g. `lunary-cache-proxy; hit; ttl=41`.",
                "schema": {"type": "string", "pattern": "^lunary-cache-proxy; "},
            },
            "ETag": {"description": "A strong validator of the body.", "schema": STRING},
            "Age": {
                "description": "Whole seconds since the entry was fetched (HIT and STALE).",
                "schema": {"type": "integer", "minimum": 0},
            },
            "XRequestId": {"schema": {"type": "string"}},
        },
        "securitySchemes": {
            "LunaryBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A Lunary API key; part of the cache scope, never stored raw.",
            },
            "LunaryApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "A Lunary API key; part of the cache scope, never stored raw.",
            },
            "AdminBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "PROXY_ADMIN_TOKEN.",
            },
        },
    },
}

DOCUMENT_BYTES = orjson.dumps(DOCUMENT)
