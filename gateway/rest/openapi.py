"""The OpenAPI 3 document, generated from the marshmallow schemas that validate requests and shape replies.

Each API view's one declaration (`@endpoint(...)`, gateway/rest/endpoints.py) records its operation here: summary,
parameters, and which schema is its body and each reply — the same schemas that load its requests and dump its
replies. `build_openapi` turns those records into the document served at /openapi.json.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from gateway.canonical.schema import DateOrDateTime
from gateway.rest.schemas import ProblemSchema

PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass
class DocumentedOperation:
    """One documented API operation (a path and method), not to be confused with a backend's vendor calls."""

    path: str
    method: str
    summary: str
    description: str
    tags: list[str]
    body: type[Schema] | dict | None = None
    #: builds named request examples from the running gateway's connections
    body_examples: Callable[[Any], Mapping[str, Any]] | None = None
    parameters: list[dict] = field(default_factory=list)
    replies: Mapping[int, tuple[str, type[Schema] | None]] = field(default_factory=dict)
    problems: Mapping[int, str] = field(default_factory=dict)
    #: None: the document-wide bearer key (and its 401/403); otherwise this operation's own schemes
    security: list[dict] | None = None
    #: the media type of its replies
    reply_media_type: str = "application/json"


OPERATIONS: list[DocumentedOperation] = []


def operation_id(operation: DocumentedOperation) -> str:
    """A stable id: the method and the path's words, e.g. patch_orders_order_id."""
    words = re.sub(r"[{}]", "", operation.path).strip("/").replace("/", "_")
    return f"{operation.method}_{words}"


def _schema_name(schema: type[Schema]) -> str:
    return schema.__name__.removesuffix("Schema")


def build_openapi(version: str, connections: Any) -> dict:
    """The whole OpenAPI 3.0 document."""
    plugin = MarshmallowPlugin(schema_name_resolver=lambda schema: _schema_name(
        schema if isinstance(schema, type) else type(schema)))
    spec = APISpec(
        title="Order gateway",
        version=version,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "One JSON REST API for updating orders in Ongoing WMS, Speed4Trade CONNECT and "
                             "Rocket SellerCenter, and for the order events their webhooks become. Every call "
                             "but a backend's webhook carries `Authorization: Bearer <key>` (Authorize, above)."},
        security=[{"bearerAuth": []}],
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("webhookBasic", {"type": "http", "scheme": "basic",
                                                     "description": "a backend's webhook, HTTP Basic"})
    spec.components.security_scheme("webhookToken", {"type": "apiKey", "in": "header", "name": "X-Webhook-Token",
                                                     "description": "a backend's webhook, a static token header "
                                                                    "(its name is the connection's setting)"})
    plugin.map_to_openapi_type(DateOrDateTime, "string", None)
    spec.components.schema("Problem", schema=ProblemSchema)
    for operation in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, (description, schema) in operation.replies.items():
            reply: dict[str, Any] = {"description": description,
                                     "headers": {"X-Request-ID": {"schema": {"type": "string"},
                                                                  "description": "the request's id"}}}
            if schema is not None:
                reply["content"] = {operation.reply_media_type: {"schema": schema}}
            responses[str(status)] = reply
        problems = dict(operation.problems)
        if operation.security is None:
            problems.setdefault(401, "no API key, or an unknown one")
            problems.setdefault(403, "the key lacks the scope or the connection")
            problems.setdefault(429, "authentication failed too often from this address or with this key's prefix: "
                                     "refused, the right key too, until Retry-After")
            problems.setdefault(503, "a store it needs cannot be used now (store-unavailable, Retry-After)")
        for status, description in sorted(problems.items()):
            headers: dict[str, Any] = {"X-Request-ID": {"schema": {"type": "string"}}}
            if status == 429:
                headers["Retry-After"] = {"schema": {"type": "integer"}, "description": "seconds to wait"}
            responses[str(status)] = {
                "description": description,
                "headers": headers,
                "content": {PROBLEM_MEDIA_TYPE: {"schema": "Problem"}},
            }
        document: dict[str, Any] = {
            "summary": operation.summary,
            "description": operation.description,
            "tags": operation.tags,
            "operationId": operation_id(operation),
            "parameters": operation.parameters,
            "responses": responses,
        }
        if operation.security is not None:
            document["security"] = operation.security
        if operation.body is not None:
            media: dict[str, Any] = {"schema": operation.body}
            if operation.body_examples is not None:
                media["examples"] = {name: {"summary": name, "value": value}
                                     for name, value in operation.body_examples(connections).items()}
            document["requestBody"] = {"required": True, "content": {"application/json": media}}
        spec.path(path=operation.path, operations={operation.method: document})
    return spec.to_dict()
