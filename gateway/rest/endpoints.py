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
from gateway.rest.queries import IgnoredQuery, QuerySchema, read_query


@dataclass(frozen=True)
class OneOf:
    """A reply of one of several shapes, the schema picked by the type of what the view returns:
    `OneOf((OrderUpdated, UpdateReplySchema), (OrderDryRun, DryRunReplySchema))`."""

    choices: tuple[tuple[type, type[Schema]], ...]

    def __init__(self, *choices: tuple[type, type[Schema]]) -> None:
        object.__setattr__(self, "choices", choices)

    def document(self) -> dict:
        """The reply's schema in the OpenAPI document."""
        return {"oneOf": [schema for _, schema in self.choices]}


#: the key of `Declaration.dumpers` whose schema dumps a result of any type
ANY_TYPE = object


@dataclass(frozen=True)
class Declaration:
    """What a route declares: its policy, and for an API operation how it is loaded, dumped and documented."""

    policy: Policy
    #: None: no API operation (a page, an asset), absent from the OpenAPI document
    operation: DocumentedOperation | None = None
    query: type[QuerySchema] = IgnoredQuery
    #: the body's documented schema; None: the endpoint takes no body
    body: type[Schema] | dict | None = None
    #: (document, **path arguments) -> what the view gets as `body`; None: the document itself
    load_body: Callable[..., Any] | None = None
    #: the type of a view's result -> the schema that dumps it (ANY_TYPE: whatever the type)
    dumpers: Mapping[type, Schema] = field(default_factory=dict)
    idempotent: bool = False
    #: the view loads its query and body itself, through its `arguments`, after checks of its own
    deferred: bool = False
    #: log field -> the path argument it lists, noted before anything is read
    log_fields: Mapping[str, str] = field(default_factory=dict)


def declaration_of(view: Callable | None) -> Declaration | None:
    """The declaration of a view function, or None when it has none."""
    return getattr(view, ATTRIBUTE, None)


def read_body(declaration: Declaration, path: Mapping[str, Any]) -> tuple[Any, Any]:
    """(the parsed document, what the view gets): the body read as bounded JSON (415, 400), then loaded as
    declared (422 naming each field path)."""
    document = read_json_body()
    if declaration.load_body is None:  # a document the view validates (a webhook: by its backend's own rules)
        return document, document
    try:
        return document, declaration.load_body(document, **path)
    except ValidationError as error:
        raise ValidationFailed(flatten_errors(error.messages)) from None


class Arguments:
    """A deferred view's query and body, loaded as its declaration says when it asks for them."""

    def __init__(self, declaration: Declaration, path: Mapping[str, Any]) -> None:
        self.declaration, self.path = declaration, path

    def query(self) -> dict[str, Any]:
        """The query loaded by the declared schema; 422 naming each wrong parameter."""
        return read_query(self.declaration.query)

    def body(self) -> Any:
        """The body read as bounded JSON (415, 400) and loaded as declared (422)."""
        return read_body(self.declaration, self.path)[1]


def _reply(declaration: Declaration, result: Any) -> Response:
    """The view's result as a reply: a Response as it is; otherwise a value (or value, status) dumped through the
    reply schema of its type."""
    if isinstance(result, Response):
        return result
    value, status = result if isinstance(result, tuple) else (result, None)
    dumpers = declaration.dumpers
    schema = dumpers.get(type(value)) or dumpers.get(ANY_TYPE)
    if schema is None:
        raise TypeError(f"{declaration.operation.summary!r} declares no reply schema for a {type(value).__name__}")
    response = current_app.json.response(schema.dump(value))
    if status is not None:
        response.status_code = status
    return response


def endpoint(method: str, path: str, summary: str, *, tags: list[str], policy: Policy, query: type[QuerySchema],
             body: type[Schema] | dict | None = None, load_body: Callable[..., Any] | None = None,
             reply: type[Schema] | OneOf | dict | None = None, replies: Mapping[int, str | tuple[str, Any]],
             idempotent: bool = False,
             deferred: bool = False, log_fields: Mapping[str, str] | None = None,
             **details: Any) -> Callable:
    """Declare an API operation: `policy` (who may call it), `query` (its QuerySchema: NoQuery when it takes none,
    IgnoredQuery when it reads none and ignores any given), `body` (its schema, which loads it unless
    `load_body(document, **path)` is given), `reply` (what its result is dumped through, documented for each of
    `replies`, status -> description, or (description, schema) for a status whose reply has another shape),
    `idempotent` (it honours Idempotency-Key: the view gets the `listener` its
    backend calls are noted on), and `log_fields` (log field -> the path argument it lists in the request's log
    fields, refused or not). The view is called with its path arguments, `query` and `body` (or, `deferred`, with
    `arguments` to load them itself); `details` are the OpenAPI document's (parameters, problems, security,
    examples, ...)."""
    if deferred and idempotent:
        raise TypeError("an idempotent endpoint loads its body before the view: its fingerprint is of that body")
    if load_body is None and isinstance(body, type) and issubclass(body, Schema):
        load_body = body().load
    if isinstance(reply, OneOf):
        dumpers, documented_reply = {kind: schema() for kind, schema in reply.choices}, reply.document()
    elif isinstance(reply, type) and issubclass(reply, Schema):
        dumpers, documented_reply = {ANY_TYPE: reply()}, reply
    else:  # documented only: the view returns its own Response
        dumpers, documented_reply = {}, reply

    def declare(view: Callable) -> Callable:
        operation = DocumentedOperation(
            path=path, method=method.lower(), summary=summary, description=(view.__doc__ or "").strip(), tags=tags,
            body=body, replies={status: text if isinstance(text, tuple) else (text, documented_reply)
                                for status, text in replies.items()}, **details)
        declaration = Declaration(policy=policy, operation=operation, query=query, body=body, load_body=load_body,
                                  dumpers=dumpers, idempotent=idempotent, deferred=deferred,
                                  log_fields=log_fields or {})
        OPERATIONS.append(operation)

        @functools.wraps(view)
        def serve(**path_arguments: Any) -> Response:
            for log_field, argument in declaration.log_fields.items():
                logs.note(**{log_field: [path_arguments[argument]]})
            key = read_key() if idempotent else None
            if deferred:
                given: dict[str, Any] = {"arguments": Arguments(declaration, path_arguments)}
            else:
                given = {"query": read_query(query)}
                if body is not None:
                    document, given["body"] = read_body(declaration, path_arguments)
            if not idempotent:
                return _reply(declaration, view(**path_arguments, **given))
            if key is None or given["query"].get("dry_run"):  # a dry run sends nothing: no reply to keep
                return _reply(declaration, view(**path_arguments, **given, listener=None))
            # the fingerprint is of the same parsed document the view gets
            print_ = fingerprint() if body is None else body_fingerprint(document)
            return run_idempotently(key, print_, lambda listener: _reply(
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
