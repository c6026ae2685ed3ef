"""The fixtures every conformance file uses: one self-signed certificate per module and the
backend parameter (asyncio, trio, sync) each test runs under."""

from __future__ import annotations

import pytest

from msgtrans.certs import write_self_signed

from .adapters import BACKENDS, Backend, Certs, make_backend


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return make_backend(request.param)
