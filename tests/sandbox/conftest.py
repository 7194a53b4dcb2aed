"""Fixtures for the sandbox tests: a fresh sandbox application (and so fresh data) per test."""

import pytest

from sandbox import create_app


@pytest.fixture
def app():
    return create_app({"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()
