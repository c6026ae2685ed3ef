"""The asyncio driver's QUIC connect skips the resolver for IP addresses written out.

Its answer must be the resolver's, address for address: QUIC drops datagrams from any address
but the one it connected to, compared as ``recvfrom`` reports it.
"""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from msgtrans.io_asyncio._transport import _numeric_addrinfo


def _resolver(host: str, port: int) -> tuple[object, ...]:
    family, kind, proto, _name, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
    )[0]
    return family, kind, proto, sockaddr


@given(ip=st.ip_addresses(), port=st.integers(1, 65535), spelled=st.sampled_from(
    ["compressed", "exploded"]))
def test_ip_addresses_resolve_as_the_resolver_would(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, spelled: str
) -> None:
    host = ip.compressed if spelled == "compressed" else ip.exploded
    infos = _numeric_addrinfo(host, port)
    assert infos is not None
    family, kind, proto, _name, sockaddr = infos[0]
    assert (family, kind, proto, sockaddr) == _resolver(host, port)


@given(host=st.sampled_from(["localhost", "example.com", "127.1", "fe80::1%lo", "1.2.3",
                             "::ffff:1.2.3.4.5", ""]))
def test_names_and_odd_forms_go_to_the_resolver(host: str) -> None:
    assert _numeric_addrinfo(host, 4433) is None
