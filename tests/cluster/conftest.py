from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, stopped after the test."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
