"""GET /openapi.json and GET /docs: the API's contract, and Swagger UI served from the gateway (no CDN)."""

from __future__ import annotations

import functools
from importlib.metadata import version

import swagger_ui_bundle
from flask import Blueprint, Response, jsonify, send_from_directory

from gateway.rest.auth import DOCS, Policy
from gateway.rest.endpoints import undocumented
from gateway.rest.openapi import build_openapi
from gateway.runtime import current_gateway

blueprint = Blueprint("docs", __name__)

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Order gateway API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 tryItOutEnabled: true, displayRequestDuration: true});
  </script>
</body>
</html>
"""


@functools.cache
def _package_version() -> str:
    try:
        return version("order-gateway")
    except Exception:  # run from a checkout that was never installed
        return "0.0.0"


#: the docs are the API's contract: open when [gateway] open_docs says so, otherwise for any known caller
DOCS_POLICY = Policy(DOCS, connection_data=False)


@blueprint.get("/openapi.json")
@undocumented(DOCS_POLICY)
def openapi_document():
    """The OpenAPI 3 document (built once per process)."""
    document = current_gateway().openapi_document
    if document is None:
        document = current_gateway().openapi_document = build_openapi(
            _package_version(), current_gateway().connections)
    return jsonify(document)


@blueprint.get("/docs")
@blueprint.get("/docs/")
@undocumented(DOCS_POLICY)
def swagger_ui():
    """Swagger UI for the OpenAPI document."""
    return Response(SWAGGER_PAGE, mimetype="text/html")


@blueprint.get("/docs/<path:filename>")
@undocumented(DOCS_POLICY)
def swagger_ui_asset(filename: str):
    """Swagger UI's own files, from the swagger-ui-bundle package."""
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=3600)
