"""One declaration per endpoint: `@endpoint(...)` says, in one place, who may call a view (its auth policy), which
query and body it takes, what it replies, and how all of that is documented in the OpenAPI document.

The declaration loads before the view runs: the query through `read_query` (refused parameters, ASCII digits),
the body through `read_json_body` (media type, size, depth) and then its loader or schema (errors as
ValidationFailed with field paths), and hands both to the view as `query` and `body`. What the view returns is
dumped through the reply schema (a Response is sent as it is: a health document, a page measured while it was
built); with `idempotent=True` the Idempotency-Key is honoured with the query's own `dry_run` and a fingerprint
of the same parsed document the view gets. `authenticate` (gateway/rest/auth.py) reads the policy from the view;
a route without a declaration is closed to all but known callers. Routes that are no API operation (the
console's pages, the docs, Flask's static files) declare their policy alone: `@undocumented(policy)`, or
`declare_route()` for a view the gateway did not write.

Why not flask-smorest (`Blueprint.arguments` / `.response`), whose idea this is: its arguments are read by
webargs, which has its own media-type and JSON handling (not our bounded `read_json_body`: depth, digits,
non-finite numbers), its own error shape (not problem+json with our field paths), and no notion of a repeated
query parameter; its document is built by its own apispec plumbing, so ours (checked by tests/test_openapi.py
and schemathesis) would change. What we need from it — one declaration that validates, dumps and documents — is
the small decorator below, over the apispec document builder we already had (gateway/rest/openapi.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app
from marshmallow import Schema, ValidationError

from gateway import logs
from gateway.canonical import flatten_errors
from gateway.errors import ValidationFailed
from gateway.rest.auth import DECLARATION_ATTRIBUTE as ATTRIBUTE
from gateway.rest.auth import Policy
from gateway.rest.common import read_json_body
from gateway.rest.idempotency import body_fingerprint, fingerprint, read_key, run_idempotently
from gateway.rest.openapi import OPERATIONS, DocumentedOperation
from gateway.rest.queries import QuerySchema, read_query


@dataclass(frozen=True)
class OneOf:
    """A reply of one of several shapes, the schema picked by the type of what the view returns:
    `OneOf((OrderUpdated, UpdateReplySchema), (OrderDryRun, DryRunReplySchema))`."""

    choices: tuple[tuple[type, type[Schema]], ...]

    def __init__(self, *choices: tuple[type, type[Schema]]) -> None:
        object.__setattr__(self, "choices", choices)

    def schema_for(self, value: Any) -> type[Schema]:
        """The schema of this value's type."""
        for kind, schema in self.choices:
            if isinstance(value, kind):
                return schema
        raise TypeError(f"no reply schema for a {type(value).__name__}")

    def document(self) -> dict:
        """The reply's schema in the OpenAPI document."""
        return {"oneOf": [schema for _, schema in self.choices]}


@dataclass(frozen=True)
class Declaration:
    """What a route declares: its policy, and for an API operation how it is loaded, dumped and documented."""

    policy: Policy
    #: None: no API operation (a page, an asset), absent from the OpenAPI document
    operation: DocumentedOperation | None = None
    query: type[QuerySchema] | None = None
    #: the body's documented schema (a marshmallow Schema loads it unless `load_body` is given); None: no body
    body: type[Schema] | dict | None = None
    #: the body's loader: (document, the view's path arguments) -> what the view gets as `body`
    load_body: Callable[..., Any] | None = None
    reply: type[Schema] | OneOf | dict | None = None
    idempotent: bool = False
    #: the view loads its query and body itself, through its `arguments`, after checks of its own
    deferred: bool = False
    #: (path arguments) -> the request's log fields, noted before anything is read
    log_fields: Callable[..., dict[str, Any]] | None = None
    #: (schema class) -> instance, made once
    _schemas: dict = field(default_factory=dict, compare=False, repr=False)

    def schema(self, schema: type[Schema]) -> Schema:
        """One instance of `schema`, kept (marshmallow schemas are reusable)."""
        instance = self._schemas.get(schema)
        if instance is None:
            instance = self._schemas[schema] = schema()
        return instance


def declaration_of(view: Callable | None) -> Declaration | None:
    """The declaration of a view function, or None when it has none."""
    return getattr(view, ATTRIBUTE, None)


class Arguments:
    """A request's query and body, loaded as its declaration says, each once, when first asked for."""

    def __init__(self, declaration: Declaration, path: Mapping[str, Any]) -> None:
        self.declaration, self.path = declaration, path
        self._query: dict[str, Any] | None = None
        self._document: Any = None
        self._body: Any = None
        self._body_loaded = False

    def query(self) -> dict[str, Any]:
        """The query loaded by the declared schema; 422 naming each wrong parameter."""
        if self._query is None:
            schema = self.declaration.query
            self._query = {} if schema is None else read_query(schema)
        return self._query

    def body(self) -> Any:
        """The body read as bounded JSON (415, 400) and loaded by the declared loader or schema (422)."""
        if not self._body_loaded:
            declaration = self.declaration
            self._document = document = read_json_body()
            try:
                if declaration.load_body is not None:
                    self._body = declaration.load_body(document, **self.path)
                elif isinstance(declaration.body, type) and issubclass(declaration.body, Schema):
                    self._body = declaration.schema(declaration.body).load(document)
                else:  # a document the view validates (a webhook: by its backend's own rules)
                    self._body = document
            except ValidationError as error:
                raise ValidationFailed(flatten_errors(error.messages)) from None
            self._body_loaded = True
        return self._body

    def fingerprint(self) -> str:
        """The request's Idempotency-Key fingerprint, of the same parsed body the view gets."""
        if self.declaration.body is None:
            return fingerprint()
        return body_fingerprint(self._document)


def _reply(declaration: Declaration, result: Any) -> Response:
    """The view's result as a reply: a Response as it is; otherwise a value (or value, status) dumped through the
    reply schema."""
    if isinstance(result, Response):
        return result
    value, status = result if isinstance(result, tuple) else (result, None)
    reply = declaration.reply
    schema = reply.schema_for(value) if isinstance(reply, OneOf) else reply
    if not (isinstance(schema, type) and issubclass(schema, Schema)):
        raise TypeError(f"{declaration.operation and declaration.operation.summary!r} returned a value but declares "
                        "no reply schema to dump it")
    response = current_app.json.response(declaration.schema(schema).dump(value))
    if status is not None:
        response.status_code = status
    return response


def endpoint(method: str, path: str, summary: str, *, tags: list[str], policy: Policy,
             query: type[QuerySchema] | None, body: type[Schema] | dict | None = None,
             load_body: Callable[..., Any] | None = None, reply: type[Schema] | OneOf | dict | None = None,
             replies: Mapping[int, str], idempotent: bool = False, deferred: bool = False,
             log_fields: Callable[..., dict[str, Any]] | None = None, **details: Any) -> Callable:
    """Declare an API operation: `policy` (who may call it), `query` (its QuerySchema; None: it reads none and any
    given is ignored), `body` (its schema, loaded by `load_body(document, **path)` when given), `reply` (the
    schema its result is dumped through, documented for each of `replies`, status -> description), and
    `idempotent` (it honours Idempotency-Key: the view gets the `listener` its backend calls are noted on), and
    `log_fields` (what its path arguments add to the request's log fields, refused or not).
    The view is called with its path arguments, `query` and `body` (or, `deferred`, with `arguments` to load
    them itself); `details` are the OpenAPI document's (parameters, problems, security, examples, ...)."""
    def declare(view: Callable) -> Callable:
        documented_reply = reply.document() if isinstance(reply, OneOf) else reply
        operation = DocumentedOperation(
            path=path, method=method.lower(), summary=summary, description=(view.__doc__ or "").strip(), tags=tags,
            body=body, replies={status: (text, documented_reply) for status, text in replies.items()}, **details)
        declaration = Declaration(policy=policy, operation=operation, query=query, body=body, load_body=load_body,
                                  reply=reply, idempotent=idempotent, deferred=deferred, log_fields=log_fields)
        OPERATIONS.append(operation)

        @functools.wraps(view)
        def serve(**path_arguments: Any) -> Response:
            if log_fields is not None:
                logs.note(**log_fields(**path_arguments))
            arguments = Arguments(declaration, path_arguments)
            key = read_key() if idempotent else None
            if deferred:
                given: dict[str, Any] = {"arguments": arguments}
            else:
                given = {"query": arguments.query()}
                if body is not None:
                    given["body"] = arguments.body()
            if not idempotent:
                return _reply(declaration, view(**path_arguments, **given))
            if key is None or arguments.query().get("dry_run"):
                return _reply(declaration, view(**path_arguments, **given, listener=None))
            return run_idempotently(key, arguments.fingerprint(), lambda listener: _reply(
                declaration, view(**path_arguments, **given, listener=listener)))

        setattr(serve, ATTRIBUTE, declaration)
        return serve

    return declare


def undocumented(policy: Policy) -> Callable:
    """Declare a route that is no API operation (a console page, the docs): its policy alone; the view reads its
    own request and is absent from the OpenAPI document."""
    def declare(view: Callable) -> Callable:
        setattr(view, ATTRIBUTE, Declaration(policy=policy))
        return view

    return declare


def declare_route(app: Flask, endpoint_name: str, policy: Policy) -> None:
    """Give a view the gateway did not write (Flask's static files) its policy."""
    view = app.view_functions[endpoint_name]

    @functools.wraps(view)
    def served(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    app.view_functions[endpoint_name] = undocumented(policy)(served)
