"""map_error and friends against a table of real faults, and the retryability accuracy over it.

Every case of the table produces its fault for real where that can be done on one machine: sockets
on 127.0.0.1 / ::1 that are refused, reset, timed out or bound twice; name resolution that fails
locally (AI_NUMERICHOST); TLS handshakes between two real ``ssl`` endpoints with certificates made
here by ``cryptography``; h11, wsproto and the ``websockets`` library fed bad bytes; two aioquic
connections wired together in memory with time passed explicitly; msgtrans's own decoders.  The
few faults that cannot be produced on loopback (a remote host timing out, DNS being down...) are
built as the exception the OS would raise and marked ``real=False``; they are checked like the
others but kept out of the accuracy figure, which counts real faults only.

Run with ``-s`` to see the figure.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import datetime
import errno
import ipaddress
import os
import pathlib
import pickle
import select
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionError
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws_events
from wsproto.frame_protocol import FrameProtocol

from msgtrans.core.errormap import (
    BUSY_RETRY_AFTER,
    DNS_RETRY_AFTER,
    REFUSED_RETRY_AFTER,
    UNREACHABLE_RETRY_AFTER,
    map_error,
    map_quic_close,
    map_websocket_close,
    map_websocket_reject,
)
from msgtrans.core.errors import (
    ConfigurationError,
    ErrorKind,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from msgtrans.core.framing import LengthPrefixedDecoder, PacketDecoder
from msgtrans.core.packet import Limits, Packet, PacketType

CONNECTION, PROTOCOL, TIMEOUT = ErrorKind.CONNECTION, ErrorKind.PROTOCOL, ErrorKind.TIMEOUT
CONFIGURATION, RESOURCE = ErrorKind.CONFIGURATION, ErrorKind.RESOURCE
LOOPBACK = "127.0.0.1"
ON_LINUX = sys.platform.startswith("linux")
# Every wait in this file is bounded by this many seconds; none is expected to come near it.
BOUND = 5.0


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Certificate files for the TLS and QUIC cases (EC keys: fast to make)."""

    ca: str  # the CA the clients trust
    other_ca: str  # a CA nobody's certificate chains to
    leaf: tuple[str, str]  # localhost + 127.0.0.1, signed by ca
    self_signed: tuple[str, str]
    expired: tuple[str, str]  # signed by ca, expired yesterday
    junk_pem: str  # a file that is not PEM at all


def _make_cert(
    cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None, *,
    ca: bool = False, valid_days: tuple[int, int] = (-1, 30),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer, issuer_name = (key, name) if issuer is None else (issuer[1], issuer[0].subject)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
        .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
        ), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")

    def write(name: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
              ) -> tuple[str, str]:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
        key.write_bytes(pair[1].private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        return str(cert), str(key)

    ca = _make_cert("msgtrans test CA", ca=True)
    junk = directory / "junk.pem"
    junk.write_text("this is not a certificate\n")
    return Pki(
        ca=write("ca", ca)[0],
        other_ca=write("other-ca", _make_cert("another CA", ca=True))[0],
        leaf=write("leaf", _make_cert("localhost", ca)),
        self_signed=write("self-signed", _make_cert("localhost")),
        expired=write("expired", _make_cert("localhost", ca, valid_days=(-10, -1))),
        junk_pem=str(junk),
    )


def client_context(cafile: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    return context


def server_context(cert: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault case: how to produce it, and what msgtrans must make of it."""

    name: str
    produce: Callable[[Pki], TransportError | None]
    kind: ErrorKind | None  # None: no error at all (a normal close)
    code: str | None
    retryable: bool
    real: bool = True


CASES: list[Fault] = []


def fault(kind: ErrorKind | None, code: str | None, retryable: bool, *, real: bool = True
          ) -> Callable[[Callable[[Pki], TransportError | None]], Callable[[Pki], Any]]:
    def register(produce: Callable[[Pki], TransportError | None]) -> Callable[[Pki], Any]:
        CASES.append(Fault(produce.__name__, produce, kind, code, retryable, real))
        return produce
    return register


def raised(call: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    """Run *call* and return the exception it raised (failing the test when it raised none)."""
    try:
        call(*args, **kwargs)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{getattr(call, '__name__', call)} did not fail")


def mapped(exc: BaseException, **context: Any) -> TransportError:
    """map_error, checked for what every mapping promises: the original kept as the cause."""
    err = map_error(exc, **context)
    if isinstance(exc, TransportError):  # ours already: passed through, not wrapped
        assert err.error_code == exc.error_code
        assert err is exc or context
    else:
        assert err.__cause__ is exc
        assert err.__suppress_context__
    if context.get("session_id") is not None:
        assert err.session_id == context["session_id"]
    return err


# --- sockets on loopback ---------------------------------------------------------------------


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def require_ipv6() -> None:
    if not socket.has_ipv6 or not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")


@contextlib.contextmanager
def closed_port(family: socket.AddressFamily = socket.AF_INET,
                kind: socket.SocketKind = socket.SOCK_STREAM) -> Iterator[tuple[Any, ...]]:
    """An address nothing listens on: bound (so no one else gets the port) but not listening."""
    host = LOOPBACK if family == socket.AF_INET else "::1"
    with socket.socket(family, kind) as holder:
        holder.bind((host, 0))
        yield holder.getsockname()


@contextlib.contextmanager
def tcp_pair(family: socket.AddressFamily = socket.AF_INET
             ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (client, server) pair of TCP sockets on loopback."""
    host = LOOPBACK if family == socket.AF_INET else "::1"
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2], timeout=BOUND) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(BOUND)
                yield client, server


def reset(peer: socket.socket, victim: socket.socket) -> None:
    """Close *peer* with SO_LINGER 0, so that it sends RST, and wait until *victim* sees it."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    readable, _, _ = select.select([victim], [], [], BOUND)
    assert readable, "the reset never arrived"


def in_subprocess(body: str) -> BaseException:
    """Run *body* in a fresh interpreter and return the exception it raised there."""
    script = textwrap.dedent(
        """
        import base64, pickle, sys
        def fault():
        {body}
        try:
            fault()
        except BaseException as exc:
            sys.stdout.write(base64.b64encode(pickle.dumps(exc)).decode())
        """
    ).format(body=textwrap.indent(textwrap.dedent(body), "    "))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                          check=True)
    assert done.stdout, f"the subprocess raised nothing: {done.stderr.decode()}"
    exc = pickle.loads(base64.b64decode(done.stdout))
    assert isinstance(exc, BaseException)
    return exc


@fault(CONNECTION, "connection.refused", True)
def connect_refused_ipv4(pki: Pki) -> TransportError:
    with closed_port() as addr, socket.socket() as sock:
        exc = raised(sock.connect, addr)
    return mapped(exc, protocol="tcp", operation="connect", session_id=7)


@fault(CONNECTION, "connection.refused", True)
def connect_refused_ipv6(pki: Pki) -> TransportError:
    require_ipv6()
    with closed_port(socket.AF_INET6) as addr, socket.socket(socket.AF_INET6) as sock:
        exc = raised(sock.connect, addr)
    return mapped(exc, protocol="tcp", operation="connect")


@fault(CONNECTION, "connection.refused", True)
def connect_refused_nonblocking(pki: Pki) -> TransportError:
    # The way event loops connect: EINPROGRESS, wait for writable, then read SO_ERROR.
    with closed_port() as addr, socket.socket() as sock:
        sock.setblocking(False)
        assert sock.connect_ex(addr) in (errno.EINPROGRESS, errno.ECONNREFUSED)
        _, writable, _ = select.select([], [sock], [], BOUND)
        assert writable
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return mapped(OSError(code, os.strerror(code)), operation="connect")


@fault(CONNECTION, "connection.refused", True)
def udp_port_unreachable(pki: Pki) -> TransportError:
    # What a QUIC client sees: the ICMP port unreachable comes back on its connected UDP socket.
    # A bound UDP socket would receive the datagram, so the port is freed first; should someone
    # take it meanwhile, the datagram is answered by nothing and another port is tried (five
    # times, two seconds each: it failed once in three tries under a loaded CI machine).
    for _ in range(5):
        with closed_port(kind=socket.SOCK_DGRAM) as addr:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.send(b"initial")
            readable, _, _ = select.select([sock], [], [], 2.0)
            if readable:
                exc = raised(sock.recv, 100)
                return mapped(exc, protocol="quic", operation="receive")
    raise AssertionError("no ICMP port unreachable came back")


@fault(CONNECTION, "connection.refused", True)
def asyncio_connect_refused(pki: Pki) -> TransportError:
    async def connect(addr: tuple[Any, ...]) -> None:
        await asyncio.open_connection(*addr)

    with closed_port() as addr:
        exc = raised(asyncio.run, connect(addr))
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.refused", True)
def asyncio_connect_refused_every_address(pki: Pki) -> TransportError:
    # A name with several addresses, all refused: asyncio folds the errors into one OSError
    # without errno ("Multiple exceptions: [Errno 111] ..., [Errno 111] ...").
    async def connect(ports: list[int]) -> None:
        loop = asyncio.get_running_loop()

        async def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOOPBACK, p)) for p in ports]

        loop.getaddrinfo = resolve  # type: ignore[method-assign]
        await asyncio.open_connection("two-addresses.invalid", 1)

    with closed_port() as first, closed_port() as second:
        exc = raised(asyncio.run, connect([first[1], second[1]]))
    assert isinstance(exc, OSError)
    assert exc.errno is None
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.refused", True)
def trio_connect_refused(pki: Pki) -> TransportError:
    trio = pytest.importorskip("trio")

    async def connect(addr: tuple[Any, ...]) -> None:
        await trio.open_tcp_stream(*addr)

    with closed_port() as addr:
        exc = raised(trio.run, connect, addr)
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.reset", True)
def reset_on_receive(pki: Pki) -> TransportError:
    with tcp_pair() as (client, server):
        reset(server, client)
        exc = raised(client.recv, 100)
    assert isinstance(exc, ConnectionResetError)
    return mapped(exc, protocol="tcp", operation="receive")


@fault(CONNECTION, "connection.reset", True)
def reset_on_send(pki: Pki) -> TransportError:
    with tcp_pair() as (client, server):
        reset(server, client)
        exc = raised(client.send, b"data")
    return mapped(exc, protocol="tcp", operation="send")


@fault(CONNECTION, "connection.reset", True)
def broken_pipe_on_send(pki: Pki) -> TransportError:
    with tcp_pair() as (client, server):
        reset(server, client)
        raised(client.recv, 100)  # takes the ECONNRESET; what follows is EPIPE
        exc = raised(client.send, b"data")
    assert isinstance(exc, BrokenPipeError)
    return mapped(exc, protocol="tcp", operation="send")


@fault(CONNECTION, "connection.reset", True)
def trio_stream_broken(pki: Pki) -> TransportError:
    trio = pytest.importorskip("trio")

    async def receive(listener: socket.socket) -> None:
        stream = await trio.open_tcp_stream(*listener.getsockname())
        async with stream:
            server, _ = listener.accept()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()
            await stream.receive_some(100)

    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        exc = raised(trio.run, receive, listener)
    assert type(exc).__name__ == "BrokenResourceError"
    return mapped(exc, operation="receive")


@fault(CONNECTION, "connection.closed", True)
def asyncio_incomplete_read(pki: Pki) -> TransportError:
    async def read(listener: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            server, _ = listener.accept()
            with server:
                server.sendall(b"half a packet")
            await reader.readexactly(100)
        finally:
            writer.close()
            await writer.wait_closed()

    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        exc = raised(asyncio.run, read(listener))
    assert isinstance(exc, asyncio.IncompleteReadError)
    return mapped(exc, operation="receive")


@fault(CONNECTION, "connection.closed", False)
def send_on_closed_socket(pki: Pki) -> TransportError:
    sock = socket.socket()
    sock.close()
    exc = raised(sock.send, b"data")
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EBADF
    return mapped(exc, operation="send")


@fault(CONNECTION, "connection.closed", True)
def receive_on_unconnected_socket(pki: Pki) -> TransportError:
    with socket.socket() as sock:
        exc = raised(sock.recv, 10)
    return mapped(exc, operation="receive")


@fault(CONNECTION, "connection.closed", False)
def trio_stream_closed_locally(pki: Pki) -> TransportError:
    trio = pytest.importorskip("trio")

    async def send(listener: socket.socket) -> None:
        stream = await trio.open_tcp_stream(*listener.getsockname())
        server, _ = listener.accept()
        server.close()
        await stream.aclose()
        await stream.send_all(b"data")

    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        exc = raised(trio.run, send, listener)
    return mapped(exc, operation="send")


@fault(CONNECTION, "connection.unreachable", True, real=False)
def network_unreachable(pki: Pki) -> TransportError:
    # Needs a missing route: tests send nothing beyond loopback, so the error is built by hand.
    exc = OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
    return mapped(exc, protocol="tcp", operation="connect")


@fault(CONNECTION, "connection.unreachable", True, real=False)
def host_unreachable(pki: Pki) -> TransportError:
    # Needs an unanswered ARP or an ICMP from a router: not producible on loopback.
    exc = OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.aborted", True, real=False)
def connection_aborted(pki: Pki) -> TransportError:
    # Windows' WSAECONNABORTED (the local stack gave up on the connection); Linux never reports it
    # on loopback.
    return mapped(ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort"))


@fault(CONNECTION, "connection.aborted", False)
def asyncio_cancelled(pki: Pki) -> TransportError:
    async def cancelled() -> BaseException:
        task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
        task.cancel()
        return raised_async_result(await asyncio.gather(task, return_exceptions=True))

    exc = asyncio.run(cancelled())
    assert isinstance(exc, asyncio.CancelledError)
    return mapped(exc, operation="receive")


def raised_async_result(results: list[Any]) -> BaseException:
    assert isinstance(results[0], BaseException)
    return results[0]


# --- timeouts --------------------------------------------------------------------------------


@fault(TIMEOUT, "timeout.elapsed", True)
def receive_timeout(pki: Pki) -> TransportError:
    with tcp_pair() as (client, _server):
        client.settimeout(0.01)
        exc = raised(client.recv, 100)
    assert isinstance(exc, TimeoutError)
    return mapped(exc, protocol="tcp", operation="receive", timeout=0.01)


@fault(TIMEOUT, "timeout.connect", True)
def connect_timeout_backlog_full(pki: Pki) -> TransportError:
    # A listener that never accepts, with its backlog full: the kernel drops further SYNs.
    with socket.socket() as listener, contextlib.ExitStack() as stack:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        for _ in range(8):
            sock = stack.enter_context(socket.socket())
            sock.settimeout(0.05)
            try:
                sock.connect(listener.getsockname())
            except TimeoutError as exc:
                return mapped(exc, protocol="tcp", operation="connect", timeout=0.05)
    pytest.skip("the kernel accepted every connection")


@fault(TIMEOUT, "timeout.connect", True, real=False)
def os_connect_timeout(pki: Pki) -> TransportError:
    # ETIMEDOUT: SYNs unanswered for minutes; a loopback peer always answers.
    exc = OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    assert isinstance(exc, TimeoutError)
    return mapped(exc, operation="connect")


@fault(TIMEOUT, "timeout.request", True)
def asyncio_wait_for_timeout(pki: Pki) -> TransportError:
    async def wait() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 0.001)

    return mapped(raised(asyncio.run, wait()), operation="request", timeout=0.001)


@fault(TIMEOUT, "timeout.elapsed", True)
def trio_fail_after(pki: Pki) -> TransportError:
    trio = pytest.importorskip("trio")

    async def wait() -> None:
        with trio.fail_after(0.001):
            await trio.Event().wait()

    exc = raised(trio.run, wait)
    assert isinstance(exc, trio.TooSlowError)
    return mapped(exc)


# --- addresses, permissions, resources -------------------------------------------------------


@fault(CONFIGURATION, "configuration.address_in_use", False)
def bind_address_in_use(pki: Pki) -> TransportError:
    with socket.socket() as first, socket.socket() as second:
        first.bind((LOOPBACK, 0))
        first.listen(1)
        exc = raised(second.bind, first.getsockname())
    return mapped(exc, protocol="tcp", operation="bind")


@fault(CONFIGURATION, "configuration.address_in_use", False)
def bind_udp_address_in_use(pki: Pki) -> TransportError:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        first.bind((LOOPBACK, 0))
        exc = raised(second.bind, first.getsockname())
    return mapped(exc, protocol="quic", operation="bind")


@fault(CONFIGURATION, "configuration.address_unavailable", False)
def bind_foreign_ipv4(pki: Pki) -> TransportError:
    # 192.0.2.1 is TEST-NET-1, never assigned to this machine; bind() sends nothing.
    with socket.socket() as sock:
        exc = raised(sock.bind, ("192.0.2.1", 0))
    return mapped(exc, operation="bind")


@fault(CONFIGURATION, "configuration.address_unavailable", False)
def bind_foreign_ipv6(pki: Pki) -> TransportError:
    require_ipv6()
    with socket.socket(socket.AF_INET6) as sock:
        exc = raised(sock.bind, ("2001:db8::1", 0))  # the IPv6 documentation prefix
    return mapped(exc, operation="bind")


@fault(RESOURCE, "resource.exhausted", True, real=False)
def no_free_local_port(pki: Pki) -> TransportError:
    # connect() with every ephemeral port taken; exhausting them would disturb the whole machine.
    exc = OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    return mapped(exc, operation="connect")


@fault(CONFIGURATION, "configuration.permission", False)
def bind_privileged_port(pki: Pki) -> TransportError:
    if sys.platform == "win32":
        pytest.skip("no privileged ports on Windows")
    start = pathlib.Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 80:
        pytest.skip("port 80 is not privileged here")
    body = """
        import os, socket
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 80))
    """
    exc = in_subprocess(body)
    assert isinstance(exc, PermissionError), exc
    return mapped(exc, operation="bind")


@fault(RESOURCE, "resource.file_descriptors", True)
def out_of_file_descriptors(pki: Pki) -> TransportError:
    if sys.platform == "win32":
        pytest.skip("no RLIMIT_NOFILE on Windows")
    exc = in_subprocess("""
        import resource, socket
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
        sockets = [socket.socket() for _ in range(64)]
    """)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EMFILE
    return mapped(exc, operation="accept")


@fault(RESOURCE, "resource.memory", True, real=False)
def out_of_socket_buffers(pki: Pki) -> TransportError:
    # ENOBUFS takes a kernel under memory pressure.
    return mapped(OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)), operation="send")


@fault(RESOURCE, "resource.memory", True)
def out_of_memory(pki: Pki) -> TransportError:
    # 4 EiB: more than any address space, so the allocation fails at once without using memory.
    return mapped(raised(bytearray, 1 << 62), operation="receive")


@fault(RESOURCE, "resource.payload_too_large", False)
def datagram_too_long(pki: Pki) -> TransportError:
    with closed_port(kind=socket.SOCK_DGRAM) as addr, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        exc = raised(sock.sendto, b"x" * 70_000, addr)
    return mapped(exc, protocol="quic", operation="send")


@fault(RESOURCE, "resource.backpressure", True)
def send_buffer_full(pki: Pki) -> TransportError:
    with tcp_pair() as (client, _server):
        client.setblocking(False)
        chunk = b"x" * 65536
        for _ in range(2000):  # at most 128 MiB; a few MiB fill both buffers
            try:
                client.send(chunk)
            except BlockingIOError as exc:
                return mapped(exc, protocol="tcp", operation="send")
    raise AssertionError("the send buffer never filled")


@fault(CONFIGURATION, "configuration.invalid", False)
def certificate_file_missing(pki: Pki) -> TransportError:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    exc = raised(context.load_cert_chain, str(pathlib.Path(pki.junk_pem).with_name("absent.pem")))
    assert isinstance(exc, FileNotFoundError)
    return mapped(exc, operation="listen")


# --- name resolution (AI_NUMERICHOST and friends: resolved locally, no DNS query) ------------


@fault(CONNECTION, "connection.dns", False)
def name_not_found(pki: Pki) -> TransportError:
    exc = raised(socket.getaddrinfo, "no-such-host", 80, flags=socket.AI_NUMERICHOST)
    assert isinstance(exc, socket.gaierror)
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.dns", False)
def name_has_no_address_in_family(pki: Pki) -> TransportError:
    exc = raised(socket.getaddrinfo, "::1", 80, family=socket.AF_INET,
                 flags=socket.AI_NUMERICHOST)
    assert isinstance(exc, socket.gaierror)
    return mapped(exc, operation="connect")


@fault(CONFIGURATION, "configuration.invalid", False)
def unknown_service_name(pki: Pki) -> TransportError:
    exc = raised(socket.getaddrinfo, LOOPBACK, "no-such-service", flags=socket.AI_NUMERICHOST)
    assert isinstance(exc, socket.gaierror)
    return mapped(exc, operation="connect")


@fault(CONFIGURATION, "configuration.invalid", False)
def unsupported_address_family(pki: Pki) -> TransportError:
    exc = raised(socket.getaddrinfo, LOOPBACK, 80, family=999, flags=socket.AI_NUMERICHOST)
    assert isinstance(exc, socket.gaierror)
    return mapped(exc, operation="connect")


@fault(CONNECTION, "connection.dns", True, real=False)
def name_resolution_temporarily_failed(pki: Pki) -> TransportError:
    # EAI_AGAIN needs a DNS server that does not answer.
    exc = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    return mapped(exc, operation="connect")


# --- TLS (two real ssl endpoints over loopback TCP, or MemoryBIO where bytes are tampered) ----


@dataclass
class Handshake:
    client: ssl.SSLSocket
    server: ssl.SSLSocket
    errors: dict[str, BaseException] = field(default_factory=dict)


@contextlib.contextmanager
def tls_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
                  server_hostname: str = "localhost") -> Iterator[Handshake]:
    """Run a TLS handshake between two non-blocking SSLSockets in this thread."""
    with tcp_pair() as (raw_client, raw_server):
        client = client_ctx.wrap_socket(raw_client, server_hostname=server_hostname,
                                        do_handshake_on_connect=False)
        server = server_ctx.wrap_socket(raw_server, server_side=True,
                                        do_handshake_on_connect=False)
        with client, server:
            result = Handshake(client, server)
            pending = {"client": client, "server": server}
            for sock in pending.values():
                sock.setblocking(False)
            for _ in range(100):
                for name, sock in list(pending.items()):
                    try:
                        sock.do_handshake()
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                    except OSError as exc:
                        result.errors[name] = exc
                    del pending[name]
                if not pending:
                    break
                readable, _, _ = select.select(list(pending.values()), [], [], BOUND)
                assert readable, f"TLS handshake stalled: {sorted(pending)} waiting"
            for sock in (client, server):
                sock.settimeout(BOUND)
            yield result


def handshake_error(pki: Pki, side: str, client_ctx: ssl.SSLContext,
                    server_ctx: ssl.SSLContext, hostname: str = "localhost") -> BaseException:
    with tls_handshake(client_ctx, server_ctx, hostname) as handshake:
        assert side in handshake.errors, handshake.errors
        return handshake.errors[side]


@fault(CONNECTION, "connection.tls_verification", False)
def tls_unknown_ca_client(pki: Pki) -> TransportError:
    exc = handshake_error(pki, "client", client_context(pki.other_ca), server_context(pki.leaf))
    assert isinstance(exc, ssl.SSLCertVerificationError)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_unknown_ca_server(pki: Pki) -> TransportError:
    # The server's side of the same handshake: the client's unknown_ca alert.
    exc = handshake_error(pki, "server", client_context(pki.other_ca), server_context(pki.leaf))
    return mapped(exc, protocol="tls", operation="accept")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_self_signed(pki: Pki) -> TransportError:
    exc = handshake_error(pki, "client", client_context(pki.ca),
                          server_context(pki.self_signed))
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_hostname_mismatch(pki: Pki) -> TransportError:
    exc = handshake_error(pki, "client", client_context(pki.ca), server_context(pki.leaf),
                          hostname="other.invalid")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_hostname_mismatch_server(pki: Pki) -> TransportError:
    exc = handshake_error(pki, "server", client_context(pki.ca), server_context(pki.leaf),
                          hostname="other.invalid")
    return mapped(exc, protocol="tls", operation="accept")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_certificate_expired(pki: Pki) -> TransportError:
    exc = handshake_error(pki, "client", client_context(pki.ca), server_context(pki.expired))
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_client_certificate_missing_server(pki: Pki) -> TransportError:
    server_ctx = server_context(pki.leaf)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(pki.ca)
    exc = handshake_error(pki, "server", client_context(pki.ca), server_ctx)
    return mapped(exc, protocol="tls", operation="accept")


@fault(CONNECTION, "connection.tls_verification", False)
def tls_client_certificate_missing_client(pki: Pki) -> TransportError:
    # With TLS 1.3 the client's handshake completes first; the server's alert arrives on the
    # first read.
    server_ctx = server_context(pki.leaf)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(pki.ca)
    with tls_handshake(client_context(pki.ca), server_ctx) as handshake:
        assert "client" not in handshake.errors
        exc = raised(handshake.client.recv, 100)
    return mapped(exc, protocol="tls", operation="receive")


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_version_mismatch_client(pki: Pki) -> TransportError:
    client_ctx = client_context(pki.ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx = server_context(pki.leaf)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    exc = handshake_error(pki, "client", client_ctx, server_ctx)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_version_mismatch_server(pki: Pki) -> TransportError:
    client_ctx = client_context(pki.ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx = server_context(pki.leaf)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    exc = handshake_error(pki, "server", client_ctx, server_ctx)
    return mapped(exc, protocol="tls", operation="accept")


def tls_client_against(pki: Pki, server_sends: bytes, *, close: bool = False) -> BaseException:
    """A TLS client handshaking with a plain TCP server that sends *server_sends*."""
    with tcp_pair() as (raw_client, server), client_context(pki.ca).wrap_socket(
        raw_client, server_hostname="localhost", do_handshake_on_connect=False
    ) as client:
        if server_sends:
            server.sendall(server_sends)
        if close:
            server.close()
        return raised(client.do_handshake)


def tls_server_against(pki: Pki, client_sends: bytes) -> BaseException:
    """A TLS server handshaking with a plain TCP client that sends *client_sends*."""
    with tcp_pair() as (client, raw_server), server_context(pki.leaf).wrap_socket(
        raw_server, server_side=True, do_handshake_on_connect=False
    ) as server:
        client.sendall(client_sends)
        return raised(server.do_handshake)


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_client_to_plain_server(pki: Pki) -> TransportError:
    exc = tls_client_against(pki, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_client_gets_fatal_alert(pki: Pki) -> TransportError:
    exc = tls_client_against(pki, b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_server_gets_http(pki: Pki) -> TransportError:
    exc = tls_server_against(pki, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return mapped(exc, protocol="tls", operation="accept")


@fault(CONNECTION, "connection.tls_handshake", False)
def tls_server_gets_broken_hello(pki: Pki) -> TransportError:
    exc = tls_server_against(pki, b"\x16\x03\x01\x00\x05hello")
    return mapped(exc, protocol="tls", operation="accept")


@fault(CONNECTION, "connection.reset", True)
def tls_peer_closes_during_handshake(pki: Pki) -> TransportError:
    exc = tls_client_against(pki, b"", close=True)
    assert isinstance(exc, ssl.SSLEOFError)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.reset", True)
def tls_peer_resets_during_handshake(pki: Pki) -> TransportError:
    with tcp_pair() as (raw_client, server), client_context(pki.ca).wrap_socket(
        raw_client, server_hostname="localhost", do_handshake_on_connect=False
    ) as client:
        reset(server, client)
        exc = raised(client.do_handshake)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.closed", True)
def tls_close_notify_during_handshake(pki: Pki) -> TransportError:
    exc = tls_client_against(pki, b"\x15\x03\x03\x00\x02\x01\x00")  # warning close_notify
    assert isinstance(exc, ssl.SSLZeroReturnError)
    return mapped(exc, protocol="tls", operation="connect")


@fault(CONNECTION, "connection.reset", True)
def tls_truncated_after_handshake(pki: Pki) -> TransportError:
    with tls_handshake(client_context(pki.ca), server_context(pki.leaf)) as handshake:
        assert not handshake.errors
        handshake.client.suppress_ragged_eofs = False
        handshake.server.close()  # no close_notify
        exc = raised(handshake.client.recv, 100)
    return mapped(exc, protocol="tls", operation="receive")


@fault(RESOURCE, "resource.backpressure", True)
def tls_would_block(pki: Pki) -> TransportError:
    with tcp_pair() as (raw_client, _server), client_context(pki.ca).wrap_socket(
        raw_client, server_hostname="localhost", do_handshake_on_connect=False
    ) as client:
        client.setblocking(False)
        exc = raised(client.do_handshake)
    assert isinstance(exc, ssl.SSLWantReadError)
    return mapped(exc, protocol="tls", operation="connect")


@fault(PROTOCOL, "protocol.tls", False)
def tls_record_tampered(pki: Pki) -> TransportError:
    # The TLS machine's way: ssl.MemoryBIO on both sides, one record corrupted in flight.
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context(pki.ca).wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context(pki.leaf).wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.write(b"a message")
    record = bytearray(c_out.read())
    record[-3] ^= 0xFF
    s_in.write(bytes(record))
    return mapped(raised(server.read, 100), protocol="tls", operation="receive")


@fault(CONFIGURATION, "configuration.invalid", False)
def tls_certificate_not_pem(pki: Pki) -> TransportError:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return mapped(raised(context.load_cert_chain, pki.junk_pem), operation="listen")


@fault(CONFIGURATION, "configuration.invalid", False)
def tls_key_does_not_match(pki: Pki) -> TransportError:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    exc = raised(context.load_cert_chain, pki.leaf[0], pki.self_signed[1])
    return mapped(exc, operation="listen")


@fault(CONFIGURATION, "configuration.invalid", False)
def tls_ca_file_not_pem(pki: Pki) -> TransportError:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return mapped(raised(context.load_verify_locations, pki.junk_pem), operation="connect")


@fault(CONFIGURATION, "configuration.invalid", False)
def tls_no_cipher_matches(pki: Pki) -> TransportError:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return mapped(raised(context.set_ciphers, "NO-SUCH-CIPHER"), operation="connect")


# --- WebSocket: h11 and wsproto fed real bad bytes -------------------------------------------


def ws_server_fed(data: bytes) -> BaseException:
    return raised(WSConnection(ConnectionType.SERVER).receive_data, data)


def ws_client_fed(response: bytes) -> BaseException:
    client = WSConnection(ConnectionType.CLIENT)
    client.send(ws_events.Request(host="localhost", target="/"))
    return raised(client.receive_data, response)


def ws_open_pair() -> tuple[WSConnection, WSConnection]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(ws_events.Request(host="localhost", target="/",
                                                      subprotocols=["msgtrans.v1"])))
    assert isinstance(next(server.events()), ws_events.Request)
    client.receive_data(server.send(ws_events.AcceptConnection(subprotocol="msgtrans.v1")))
    assert isinstance(next(client.events()), ws_events.AcceptConnection)
    return client, server


def ws_frame(opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True,
             rsv: int = 0) -> bytes:
    """One client-to-server frame, built by hand so that it can break the rules."""
    assert len(payload) < 126
    head = bytes([(0x80 if fin else 0) | rsv | opcode, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    key = b"\x12\x34\x56\x78"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_server_close(frame: bytes) -> TransportError | None:
    """Feed *frame* to an open wsproto server and map the close it answers with."""
    _client, server = ws_open_pair()
    server.receive_data(frame)
    event = next(server.events())
    assert isinstance(event, ws_events.CloseConnection), event
    return map_websocket_close(event.code, event.reason, by_peer=False)


def ws_client_receives_close(code: int) -> TransportError | None:
    """An open wsproto server closes with *code*; map what the wsproto client receives."""
    client, server = ws_open_pair()
    client.receive_data(server.send(ws_events.CloseConnection(code=code, reason="bye")))
    event = next(client.events())
    assert isinstance(event, ws_events.CloseConnection)
    assert event.code == code
    return map_websocket_close(event.code, event.reason, session_id=3)


@fault(PROTOCOL, "protocol.websocket", False)
def ws_request_without_upgrade(pki: Pki) -> TransportError:
    exc = ws_server_fed(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return mapped(exc, protocol="websocket", operation="accept")


@fault(PROTOCOL, "protocol.websocket", False)
def ws_request_not_get(pki: Pki) -> TransportError:
    exc = ws_server_fed(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    return mapped(exc, protocol="websocket", operation="accept")


@fault(PROTOCOL, "protocol.websocket", False)
def ws_server_gets_tls_hello(pki: Pki) -> TransportError:
    # wss:// client talking to a ws:// server.
    exc = ws_server_fed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n")
    return mapped(exc, protocol="websocket", operation="accept")


@fault(PROTOCOL, "protocol.websocket", False)
def ws_bad_accept_token(pki: Pki) -> TransportError:
    exc = ws_client_fed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n")
    return mapped(exc, protocol="websocket", operation="connect")


@fault(PROTOCOL, "protocol.websocket", False)
def ws_server_speaks_ssh(pki: Pki) -> TransportError:
    exc = ws_client_fed(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    return mapped(exc, protocol="websocket", operation="connect")


@fault(PROTOCOL, "protocol.websocket", False)
def h11_garbage_request(pki: Pki) -> TransportError:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"\x00\x01 not http\r\n\r\n")
    exc = raised(connection.next_event)
    assert isinstance(exc, h11.RemoteProtocolError)
    return mapped(exc, operation="accept")


@fault(PROTOCOL, "protocol.websocket", False)
def h11_local_misuse(pki: Pki) -> TransportError:
    exc = raised(h11.Connection(h11.CLIENT).send, h11.Data(data=b"body before request"))
    assert isinstance(exc, h11.LocalProtocolError)
    return mapped(exc, operation="connect")


@fault(PROTOCOL, "protocol.websocket", False)
def wsproto_local_misuse(pki: Pki) -> TransportError:
    client = WSConnection(ConnectionType.CLIENT)
    exc = raised(client.send, ws_events.BytesMessage(data=b"before the handshake"))
    return mapped(exc, operation="send")


@fault(PROTOCOL, "protocol.websocket", False)
def ws_unmasked_client_frame(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x2, b"packet", masked=False))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_reserved_opcode(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x3, b"packet"))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_reserved_bit(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x2, b"packet", rsv=0x40))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_fragmented_ping(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x9, b"", fin=False))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_close_with_reserved_code(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x8, struct.pack(">H", 1005)))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_invalid_utf8_text(pki: Pki) -> TransportError | None:
    return ws_server_close(ws_frame(0x1, b"\xff\xfe"))


@fault(PROTOCOL, "protocol.websocket", False)
def ws_frame_parser_fails(pki: Pki) -> TransportError:
    parser = FrameProtocol(client=False, extensions=[])
    parser.receive_bytes(ws_frame(0x2, b"packet", masked=False))
    return mapped(raised(list, parser.received_frames()), operation="receive")


@fault(PROTOCOL, "protocol.frame_too_large", False)
def ws_message_over_peer_limit(pki: Pki) -> TransportError | None:
    # A real third-party peer with a 10-byte limit closes with 1009.
    server_protocol = pytest.importorskip("websockets.server").ServerProtocol
    server = server_protocol(max_size=10)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(ws_events.Request(host="localhost", target="/")))
    server.send_response(server.accept(server.events_received()[0]))
    client.receive_data(b"".join(server.data_to_send()))
    assert isinstance(next(client.events()), ws_events.AcceptConnection)
    server.receive_data(client.send(ws_events.BytesMessage(data=b"x" * 100)))
    client.receive_data(b"".join(server.data_to_send()))
    event = next(client.events())
    assert isinstance(event, ws_events.CloseConnection)
    return map_websocket_close(event.code, event.reason)


@fault(CONNECTION, "connection.reset", True)
def ws_stream_ends_without_close(pki: Pki) -> TransportError | None:
    client, _server = ws_open_pair()
    client.receive_data(None)
    event = next(client.events())
    assert isinstance(event, ws_events.CloseConnection)
    return map_websocket_close(event.code, event.reason)


@fault(None, None, False)
def ws_normal_close(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1000)


@fault(None, None, False)
def ws_going_away(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1001)


@fault(CONNECTION, "connection.failed", True)
def ws_server_internal_error(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1011)


@fault(CONNECTION, "connection.closed", True)
def ws_service_restart(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1012)


@fault(CONNECTION, "connection.refused_by_server", True)
def ws_try_again_later(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1013)


@fault(PROTOCOL, "protocol.violation", False)
def ws_policy_violation(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(1008)


@fault(CONNECTION, "connection.closed", False)
def ws_application_close_code(pki: Pki) -> TransportError | None:
    return ws_client_receives_close(4000)


def ws_rejected(status: int) -> TransportError:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(ws_events.Request(host="localhost", target="/")))
    next(server.events())
    client.receive_data(server.send(ws_events.RejectConnection(status_code=status)))
    event = next(client.events())
    assert isinstance(event, ws_events.RejectConnection)
    return map_websocket_reject(event.status_code, operation="connect")


@fault(CONNECTION, "connection.refused_by_server", True)
def ws_upgrade_rejected_busy(pki: Pki) -> TransportError:
    return ws_rejected(503)


@fault(CONNECTION, "connection.handshake", False)
def ws_upgrade_rejected_forbidden(pki: Pki) -> TransportError:
    return ws_rejected(403)


# --- QUIC: two aioquic connections wired together in memory, time passed explicitly ---------

CLIENT_ADDR = (LOOPBACK, 40001)
SERVER_ADDR = (LOOPBACK, 40002)
T0 = 1000.0


def quic_pair(pki: Pki, *, cafile: str | None = None, cert: tuple[str, str] | None = None,
              server_name: str = "localhost", server_alpn: str = "msgtrans.v1",
              idle_timeout: float = 60.0) -> tuple[QuicConnection, QuicConnection]:
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["msgtrans.v1"],
                                      server_name=server_name, idle_timeout=idle_timeout)
    client_config.load_verify_locations(cafile or pki.ca)
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[server_alpn],
                                      idle_timeout=idle_timeout)
    server_config.load_cert_chain(*(cert or pki.leaf))
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(configuration=server_config,
                            original_destination_connection_id=
                            client.original_destination_connection_id)
    return client, server


@dataclass
class QuicRun:
    now: float
    terminated: dict[str, quic_events.ConnectionTerminated] = field(default_factory=dict)
    handshake_done: set[str] = field(default_factory=set)


def quic_run(client: QuicConnection, server: QuicConnection, run: QuicRun,
             until: Callable[[QuicRun], bool]) -> QuicRun:
    """Pass datagrams both ways, then run timers, until *until* holds (at most 500 steps)."""
    sides = {"client": client, "server": server}
    for _ in range(500):
        moved = False
        for data, _addr in client.datagrams_to_send(run.now):
            moved = True
            server.receive_datagram(data, CLIENT_ADDR, run.now)
        for data, _addr in server.datagrams_to_send(run.now):
            moved = True
            client.receive_datagram(data, SERVER_ADDR, run.now)
        for name, side in sides.items():
            while (event := side.next_event()) is not None:
                if isinstance(event, quic_events.ConnectionTerminated):
                    run.terminated[name] = event
                elif isinstance(event, quic_events.HandshakeCompleted):
                    run.handshake_done.add(name)
        if until(run):
            return run
        if not moved:
            timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
            assert timers, "nothing left to happen"
            run.now = max(run.now, min(timers))
            for side in sides.values():
                timer = side.get_timer()
                if timer is not None and timer <= run.now:
                    side.handle_timer(run.now)
    raise AssertionError(f"QUIC run did not finish: {run}")


def both_terminated(run: QuicRun) -> bool:
    return len(run.terminated) == 2


def quic_handshake_failure(pki: Pki, side: str, **pair: Any) -> TransportError | None:
    client, server = quic_pair(pki, **pair)
    client.connect(SERVER_ADDR, T0)
    run = quic_run(client, server, QuicRun(T0), both_terminated)
    event = run.terminated[side]
    return map_quic_close(event.error_code, event.reason_phrase, event.frame_type,
                          by_peer=(side == "server"), operation="handshake")


def quic_peer_closes(pki: Pki, error_code: int, frame_type: int | None) -> TransportError | None:
    client, server = quic_pair(pki)
    client.connect(SERVER_ADDR, T0)
    run = quic_run(client, server, QuicRun(T0), lambda r: len(r.handshake_done) == 2)
    server.close(error_code=error_code, frame_type=frame_type, reason_phrase="closing")
    run = quic_run(client, server, run, lambda r: "client" in r.terminated)
    event = run.terminated["client"]
    assert event.error_code == error_code
    return map_quic_close(event.error_code, event.reason_phrase, event.frame_type, by_peer=True)


@fault(CONNECTION, "connection.tls_verification", False)
def quic_unknown_ca_client(pki: Pki) -> TransportError | None:
    return quic_handshake_failure(pki, "client", cafile=pki.other_ca)


@fault(CONNECTION, "connection.tls_verification", False)
def quic_unknown_ca_server(pki: Pki) -> TransportError | None:
    return quic_handshake_failure(pki, "server", cafile=pki.other_ca)


@fault(CONNECTION, "connection.tls_verification", False)
def quic_self_signed(pki: Pki) -> TransportError | None:
    return quic_handshake_failure(pki, "client", cert=pki.self_signed)


@fault(CONNECTION, "connection.tls_verification", False)
def quic_hostname_mismatch(pki: Pki) -> TransportError | None:
    return quic_handshake_failure(pki, "client", server_name="other.invalid")


@fault(CONNECTION, "connection.tls_verification", False)
def quic_certificate_expired(pki: Pki) -> TransportError | None:
    return quic_handshake_failure(pki, "client", cert=pki.expired)


@fault(CONNECTION, "connection.tls_handshake", False)
def quic_alpn_mismatch(pki: Pki) -> TransportError | None:
    # The server answers no_application_protocol: a peer that does not speak msgtrans.v1.
    return quic_handshake_failure(pki, "client", server_alpn="h3")


@fault(TIMEOUT, "timeout.idle", True)
def quic_idle_timeout(pki: Pki) -> TransportError | None:
    client, server = quic_pair(pki, idle_timeout=5.0)
    client.connect(SERVER_ADDR, T0)
    run = quic_run(client, server, QuicRun(T0), lambda r: len(r.handshake_done) == 2)
    # From here on the server's datagrams are lost: the client hears nothing and times out.
    now = run.now
    for _ in range(100):
        timer = client.get_timer()
        assert timer is not None
        now = timer
        client.handle_timer(now)
        client.datagrams_to_send(now)
        terminated = [e for e in iter(client.next_event, None)
                      if isinstance(e, quic_events.ConnectionTerminated)]
        if terminated:
            event = terminated[0]
            return map_quic_close(event.error_code, event.reason_phrase, event.frame_type,
                                  by_peer=False, idle_timeout=5.0)
    raise AssertionError("the client never timed out")


@fault(TIMEOUT, "timeout.handshake", True)
def quic_handshake_timeout(pki: Pki) -> TransportError | None:
    client, _server = quic_pair(pki, idle_timeout=5.0)
    client.connect(SERVER_ADDR, T0)
    now = T0
    for _ in range(100):  # every datagram lost: nobody answers
        client.datagrams_to_send(now)
        timer = client.get_timer()
        assert timer is not None
        now = timer
        client.handle_timer(now)
        terminated = [e for e in iter(client.next_event, None)
                      if isinstance(e, quic_events.ConnectionTerminated)]
        if terminated:
            event = terminated[0]
            return map_quic_close(event.error_code, event.reason_phrase, event.frame_type,
                                  by_peer=False, operation="handshake", idle_timeout=5.0)
    raise AssertionError("the client never timed out")


@fault(CONNECTION, "connection.handshake", False)
def quic_no_common_version(pki: Pki) -> TransportError | None:
    # The server endpoint answers an unsupported version with Version Negotiation, built the
    # way aioquic's own server builds it.
    client, _server = quic_pair(pki)
    client._configuration.supported_versions = [QuicProtocolVersion.VERSION_2]
    client.connect(SERVER_ADDR, T0)
    initial = client.datagrams_to_send(T0)[0][0]
    header = pull_quic_header(Buffer(data=initial), host_cid_length=8)
    client.receive_datagram(encode_quic_version_negotiation(
        source_cid=header.destination_cid, destination_cid=header.source_cid,
        supported_versions=[QuicProtocolVersion.VERSION_1]), SERVER_ADDR, T0)
    event = next(e for e in iter(client.next_event, None)
                 if isinstance(e, quic_events.ConnectionTerminated))
    return map_quic_close(event.error_code, event.reason_phrase, event.frame_type,
                          by_peer=False, operation="connect")


@fault(PROTOCOL, "protocol.quic", False)
def quic_peer_reports_protocol_violation(pki: Pki) -> TransportError | None:
    return quic_peer_closes(pki, QuicErrorCode.PROTOCOL_VIOLATION, QuicFrameType.STREAM_BASE)


@fault(PROTOCOL, "protocol.quic", False)
def quic_peer_reports_flow_control_error(pki: Pki) -> TransportError | None:
    return quic_peer_closes(pki, QuicErrorCode.FLOW_CONTROL_ERROR, QuicFrameType.STREAM_BASE)


@fault(CONNECTION, "connection.refused_by_server", True)
def quic_server_refuses(pki: Pki) -> TransportError | None:
    return quic_peer_closes(pki, QuicErrorCode.CONNECTION_REFUSED, QuicFrameType.PADDING)


@fault(None, None, False)
def quic_peer_closes_normally(pki: Pki) -> TransportError | None:
    return quic_peer_closes(pki, 0, None)


@fault(CONNECTION, "connection.closed", False)
def quic_peer_closes_with_application_code(pki: Pki) -> TransportError | None:
    return quic_peer_closes(pki, 42, None)


@fault(PROTOCOL, "protocol.quic", False, real=False)
def quic_connection_error(pki: Pki) -> TransportError:
    # aioquic raises QuicConnectionError inside its frame handlers and turns it into a close
    # itself; a machine driving QuicConnection only sees it if aioquic lets one escape.
    exc = QuicConnectionError(QuicErrorCode.STREAM_STATE_ERROR, QuicFrameType.STREAM_BASE,
                              "stream is closed")
    return mapped(exc, protocol="quic", operation="receive")


# --- msgtrans's own decoders -----------------------------------------------------------------


def wire_header(version: int = 1, compression: int = 0, ptype: int = 0,
                payload_len: int = 0) -> bytes:
    return struct.pack(">BBBBIHIH", version, compression, ptype, 0, 1, 0, payload_len, 0)


@fault(PROTOCOL, "protocol.bad_version", False)
def wire_bad_version(pki: Pki) -> TransportError:
    exc = raised(PacketDecoder().feed, wire_header(version=2))
    return mapped(exc, protocol="tcp", operation="receive", session_id=11)


@fault(PROTOCOL, "protocol.frame_too_large", False)
def wire_payload_over_limit(pki: Pki) -> TransportError:
    decoder = PacketDecoder(Limits(max_payload=1024))
    return mapped(raised(decoder.feed, wire_header(payload_len=1025)), operation="receive")


@fault(PROTOCOL, "protocol.frame_too_large", False)
def wire_quic_frame_over_limit(pki: Pki) -> TransportError:
    decoder = LengthPrefixedDecoder()
    exc = raised(decoder.feed, struct.pack(">I", 32 * 1024 * 1024) + wire_header())
    return mapped(exc, protocol="quic", operation="receive")


@fault(PROTOCOL, "protocol.bad_packet_type", False)
def wire_bad_packet_type(pki: Pki) -> TransportError:
    return mapped(raised(PacketDecoder().feed, wire_header(ptype=9)), operation="receive")


@fault(PROTOCOL, "protocol.bad_length", False)
def wire_packet_too_short(pki: Pki) -> TransportError:
    return mapped(raised(Packet.decode, b"\x01\x00\x00"), operation="receive")


@fault(PROTOCOL, "protocol.unexpected_eof", True)
def wire_stream_ends_inside_packet(pki: Pki) -> TransportError:
    decoder = PacketDecoder()
    assert decoder.feed(Packet(PacketType.ONE_WAY, 1, 0, b"hello").encode()[:10]) == []
    return mapped(raised(decoder.feed_eof), operation="receive")


@fault(CONNECTION, "connection.failed", False)
def unexpected_bug(pki: Pki) -> TransportError:
    # A bug is not a network condition: retrying cannot help.
    return mapped(raised({}.__getitem__, "missing"), operation="send")


# --- the table, run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    error: TransportError | None = None
    skipped: str | None = None


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    return {}


def outcome_of(case: Fault, pki: Pki, memo: dict[str, Outcome]) -> Outcome:
    if case.name not in memo:
        try:
            memo[case.name] = Outcome(error=case.produce(pki))
        except pytest.skip.Exception as skip:
            memo[case.name] = Outcome(skipped=str(skip))
    return memo[case.name]


def verdict(case: Fault, err: TransportError | None) -> tuple[bool, bool]:
    """(kind right, retryability right) for one case."""
    if case.kind is None:
        return err is None, err is None
    if err is None:
        return False, False
    return err.kind is case.kind, err.is_retryable() is case.retryable


def test_table_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)
    assert sum(case.real for case in CASES) >= 40


@pytest.mark.network
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fault(case: Fault, pki: Pki, outcomes: dict[str, Outcome]) -> None:
    outcome = outcome_of(case, pki, outcomes)
    if outcome.skipped is not None:
        pytest.skip(outcome.skipped)
    err = outcome.error
    if case.kind is None:
        assert err is None, f"a normal close mapped to {err!r}"
        return
    assert err is not None
    assert (err.kind, err.error_code, err.is_retryable()) == (
        case.kind, case.code, case.retryable), str(err)
    assert err.retryable is err.is_retryable()
    if case.retryable:
        delay = err.retry_delay()
        assert delay is not None
        assert delay > 0
    else:
        assert err.retry_delay() is None
    builtin = {CONNECTION: ConnectionError, TIMEOUT: TimeoutError, CONFIGURATION: ValueError}
    if case.kind in builtin:
        assert isinstance(err, builtin[case.kind])
    assert str(err).startswith(f"[{case.code}] ")


@pytest.mark.network
def test_retryability_accuracy(pki: Pki, outcomes: dict[str, Outcome]) -> None:
    produced = [(case, outcome_of(case, pki, outcomes)) for case in CASES]
    real = [(case, o.error) for case, o in produced if case.real and o.skipped is None]
    constructed = [(case, o.error) for case, o in produced if not case.real]
    n = len(real)
    retry_right = [c.name for c, err in real if verdict(c, err)[1]]
    kind_right = [c.name for c, err in real if verdict(c, err)[0]]
    acc = len(retry_right) / n
    kind_acc = len(kind_right) / n
    other = sum(verdict(c, err)[1] for c, err in constructed) / len(constructed)
    print(f"\nretryability accuracy: {acc:.1%} over {n} real fault cases")
    print(f"kind accuracy: {kind_acc:.1%} over {n} real fault cases")
    print(f"retryability accuracy: {other:.1%} over {len(constructed)} constructed fault cases")
    wrong = sorted({c.name for c, _ in real} - set(retry_right))
    assert n >= 40, f"only {n} real fault cases could be produced here"
    assert acc == 1.0, (f"retryability accuracy: {acc:.1%} over {n} real fault cases; "
                        f"wrong: {wrong}")
    assert kind_acc == 1.0, f"kind accuracy: {kind_acc:.1%} over {n} real fault cases"
    assert other == 1.0


# --- the mapping rules one by one (inputs that cannot be produced for real) ------------------


def test_transport_error_passes_through_and_gains_missing_context() -> None:
    original = ProtocolError(Protocol.WIRE, "bad", code="protocol.bad_version")
    assert map_error(original) is original
    enriched = map_error(original, operation="receive", session_id=5)
    assert (enriched.operation, enriched.session_id) == ("receive", 5)
    assert enriched is not original
    assert original.operation is None
    assert original.session_id is None
    named = original.with_operation("decode").with_session(1)
    kept = map_error(named, operation="receive", session_id=5)
    assert kept is named  # the innermost context wins
    assert "operation decode" in str(kept)


def test_unknown_protocol_name_is_refused() -> None:
    with pytest.raises(ValueError, match="carrier-pigeon"):
        map_error(OSError(errno.ECONNRESET, "reset"), protocol="carrier-pigeon")


def test_reason_names_the_layer_and_keeps_the_original_message() -> None:
    err = map_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                    protocol=Protocol.QUIC, operation="connect", session_id="s-1")
    assert str(err) == (f"[connection.refused] quic: connection refused ([Errno "
                        f"{errno.ECONNREFUSED}] Connection refused) (operation connect, "
                        f"session s-1)")
    assert err.reason.startswith("quic: connection refused")


def test_retry_delays() -> None:
    refused = map_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    reset_err = map_error(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert refused.retry_delay() == REFUSED_RETRY_AFTER
    assert reset_err.retry_delay() == 1.0  # the TransportConnectionError default
    assert REFUSED_RETRY_AFTER > 1.0
    unreachable = map_error(OSError(errno.ENETUNREACH, "unreachable"))
    assert unreachable.retry_delay() == UNREACHABLE_RETRY_AFTER
    again = map_error(socket.gaierror(socket.EAI_AGAIN, "again"))
    assert again.retry_delay() == DNS_RETRY_AFTER
    busy = map_websocket_close(1013, "")
    assert busy is not None
    assert busy.retry_delay() == BUSY_RETRY_AFTER
    assert map_websocket_reject(503, retry_after=30.0).retry_delay() == 30.0
    assert map_websocket_reject(429).retry_delay() == BUSY_RETRY_AFTER
    timeout = map_error(TimeoutError())
    assert timeout.retry_delay() == 0.5


def test_timeout_duration_and_code_follow_the_operation() -> None:
    for operation, code in [("connect", "timeout.connect"), ("handshake", "timeout.handshake"),
                            ("accept", "timeout.handshake"), ("request", "timeout.request"),
                            ("idle", "timeout.idle"), ("keepalive", "timeout.keepalive"),
                            ("close", "timeout.close"), ("send", "timeout.elapsed")]:
        err = map_error(TimeoutError("timed out"), operation=operation, timeout=2.5)
        assert isinstance(err, TransportTimeoutError)
        assert (err.error_code, err.operation, err.duration) == (code, operation, 2.5)
        assert "after 2.5 s" in err.reason
    unknown = map_error(TimeoutError())
    assert isinstance(unknown, TransportTimeoutError)
    assert (unknown.operation, unknown.duration) == ("io", 0.0)


@pytest.mark.parametrize(("number", "code", "retryable"), [
    (errno.ECONNREFUSED, "connection.refused", True),
    (errno.ECONNRESET, "connection.reset", True),
    (errno.EPIPE, "connection.reset", True),
    (errno.ECONNABORTED, "connection.aborted", True),
    (errno.ENETUNREACH, "connection.unreachable", True),
    (errno.EHOSTUNREACH, "connection.unreachable", True),
    (errno.ENETDOWN, "connection.unreachable", True),
    (errno.ETIMEDOUT, "timeout.elapsed", True),
    (errno.ENOTCONN, "connection.closed", True),
    (errno.EBADF, "connection.closed", False),
    (errno.EADDRINUSE, "configuration.address_in_use", False),
    (errno.EADDRNOTAVAIL, "configuration.address_unavailable", False),
    (errno.EACCES, "configuration.permission", False),
    (errno.EPERM, "configuration.permission", False),
    (errno.EMFILE, "resource.file_descriptors", True),
    (errno.ENFILE, "resource.file_descriptors", True),
    (errno.ENOBUFS, "resource.memory", True),
    (errno.ENOMEM, "resource.memory", True),
    (errno.EMSGSIZE, "resource.payload_too_large", False),
    (errno.EAGAIN, "resource.backpressure", True),
    (errno.EINTR, "resource.backpressure", True),
    (errno.EAFNOSUPPORT, "configuration.invalid", False),
    (errno.ENOENT, "configuration.invalid", False),
    (errno.EINVAL, "connection.failed", False),
    (errno.EIO, "connection.failed", False),
])
def test_errno_table(number: int, code: str, retryable: bool) -> None:
    exc = OSError(number, os.strerror(number))
    err = map_error(exc)
    assert (err.error_code, err.is_retryable()) == (code, retryable)
    assert err.__cause__ is exc
    # asyncio folds several attempts into one message without errno: same result.
    text = f"Multiple exceptions: [Errno {number}] first, [Errno {number}] second"
    assert map_error(OSError(text)).error_code == code


def test_errno_in_text_must_be_unambiguous() -> None:
    mixed = OSError(f"Multiple exceptions: [Errno {errno.ECONNREFUSED}] a, "
                    f"[Errno {errno.ENETUNREACH}] b")
    err = map_error(mixed)
    assert (err.error_code, err.is_retryable()) == ("connection.failed", False)


def test_file_descriptor_error_carries_the_limit() -> None:
    err = map_error(OSError(errno.EMFILE, "Too many open files"))
    assert isinstance(err, ResourceError)
    assert err.resource == "file_descriptors"
    if sys.platform != "win32":
        import resource
        assert err.limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_connection_error_subclasses_without_errno() -> None:
    # asyncio raises these bare ("Connection lost").
    assert map_error(ConnectionResetError("Connection lost")).error_code == "connection.reset"
    assert map_error(BrokenPipeError()).error_code == "connection.reset"
    assert map_error(ConnectionRefusedError()).error_code == "connection.refused"
    assert map_error(ConnectionAbortedError()).error_code == "connection.aborted"
    plain = map_error(ConnectionError("gone"))
    assert (plain.error_code, plain.is_retryable()) == ("connection.failed", True)


@pytest.mark.parametrize(("name", "code", "retryable"), [
    ("EAI_NONAME", "connection.dns", False),
    ("EAI_NODATA", "connection.dns", False),
    ("EAI_FAIL", "connection.dns", False),
    ("EAI_AGAIN", "connection.dns", True),
    ("EAI_SYSTEM", "connection.dns", True),
    ("EAI_SERVICE", "configuration.invalid", False),
    ("EAI_FAMILY", "configuration.invalid", False),
    ("EAI_SOCKTYPE", "configuration.invalid", False),
    ("EAI_BADFLAGS", "configuration.invalid", False),
    ("EAI_MEMORY", "resource.memory", True),
])
def test_gaierror_table(name: str, code: str, retryable: bool) -> None:
    number = getattr(socket, name, None)
    if number is None:
        pytest.skip(f"no {name} on this platform")
    err = map_error(socket.gaierror(number, name))
    assert (err.error_code, err.is_retryable()) == (code, retryable)


def test_gaierror_is_recognised_before_errno() -> None:
    # On macOS EAI_AGAIN is 2, ENOENT's number: the errno table must not see a gaierror.
    err = map_error(socket.gaierror(errno.ENOENT, "looks like ENOENT"))
    assert err.error_code == "connection.dns"
    assert map_error(socket.herror(1, "Unknown host")).error_code == "connection.dns"


def test_ssl_errors_by_reason() -> None:
    syscall = map_error(ssl.SSLSyscallError(5, "syscall"))
    assert (syscall.error_code, syscall.is_retryable()) == ("connection.reset", True)
    assert map_error(ssl.SSLWantWriteError(3, "write")).error_code == "resource.backpressure"
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_INTERNAL_ERROR] internal error")
    alert.reason = "TLSV1_ALERT_INTERNAL_ERROR"
    during = map_error(alert, operation="handshake")
    assert (during.error_code, during.is_retryable()) == ("connection.tls_handshake", False)
    after = map_error(alert, operation="send")
    assert isinstance(after, ProtocolError)
    assert (after.protocol, after.error_code) == (Protocol.TLS, "protocol.tls")
    revoked = ssl.SSLError(1, "revoked")
    revoked.reason = "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert map_error(revoked, operation="receive").error_code == "connection.tls_verification"


def test_cancellation_and_exit_map_to_aborted() -> None:
    for exc in (KeyboardInterrupt(), SystemExit(1), GeneratorExit()):
        err = map_error(exc)
        assert (err.error_code, err.is_retryable()) == ("connection.aborted", False)


def test_exception_groups() -> None:
    # Builtin from Python 3.11; trio brings the backport to 3.10.
    group_type: Any = getattr(builtins, "ExceptionGroup", None) or pytest.importorskip(
        "exceptiongroup").ExceptionGroup
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    same = group_type("attempts", [refused, ConnectionRefusedError(errno.ECONNREFUSED, "again")])
    err = map_error(same)
    assert err.error_code == "connection.refused"
    assert err.__cause__ is same
    assert refused.__cause__ is None
    mixed = group_type("attempts", [refused, OSError(errno.ENETUNREACH, "unreachable")])
    err = map_error(mixed)
    assert (err.error_code, err.is_retryable()) == ("connection.failed", True)
    hopeless = group_type("attempts", [refused, socket.gaierror(socket.EAI_NONAME, "no")])
    assert map_error(hopeless).is_retryable() is False
    ours = ProtocolError(Protocol.WIRE, "bad", code="protocol.bad_version")
    inner = map_error(group_type("one", [ours]), session_id=9)
    assert inner is not ours
    assert inner.error_code == "protocol.bad_version"
    assert inner.session_id == 9
    assert ours.session_id is None
    assert ours.__cause__ is None


def test_causes_are_followed_a_bounded_depth() -> None:
    class Wrapper(Exception):
        pass

    root = ConnectionResetError(errno.ECONNRESET, "reset")
    exc: BaseException = root
    for depth in range(3):
        outer = Wrapper(f"level {depth}")
        outer.__cause__ = exc
        exc = outer
    assert map_error(exc).error_code == "connection.reset"
    for depth in range(10):
        outer = Wrapper(f"level {depth}")
        outer.__cause__ = exc
        exc = outer
    deep = map_error(exc)
    assert (deep.error_code, deep.is_retryable()) == ("connection.failed", False)
    looped = Wrapper("loop")
    looped.__cause__ = looped
    assert map_error(looped).error_code == "connection.failed"


def test_trio_broken_stream_without_cause() -> None:
    trio = pytest.importorskip("trio")
    err = map_error(trio.BrokenResourceError("the other end went away"))
    assert (err.error_code, err.is_retryable()) == ("connection.reset", True)


def test_aioquic_tls_alert() -> None:
    from aioquic import tls

    err = map_error(tls.AlertBadCertificate("bad"), protocol="quic")
    assert err.error_code == "connection.tls_verification"
    err = map_error(tls.AlertHandshakeFailure("no"))
    assert err.error_code == "connection.tls_handshake"


def test_quic_connection_error_with_no_error_code() -> None:
    err = map_error(QuicConnectionError(0, QuicFrameType.PADDING, "done"))
    assert (err.error_code, err.is_retryable()) == ("connection.closed", False)


def test_python_310_timeout_classes_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    # On 3.10 asyncio.TimeoutError is its own class in asyncio.exceptions: stand one in.
    import types

    class LegacyTimeout(Exception):
        pass

    fake = types.ModuleType("asyncio.exceptions")
    fake.TimeoutError = LegacyTimeout  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "asyncio.exceptions", fake)
    err = map_error(LegacyTimeout(), operation="request")
    assert isinstance(err, TransportTimeoutError)
    assert err.error_code == "timeout.request"


def test_libraries_that_were_never_imported_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("trio", "h11", "wsproto.utilities", "wsproto.frame_protocol",
                 "aioquic.quic.connection", "aioquic.tls", "concurrent.futures._base"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert map_error(TimeoutError()).error_code == "timeout.elapsed"
    assert map_error(ValueError("odd")).error_code == "connection.failed"


def test_wsproto_parse_failure_with_too_big_code() -> None:
    from wsproto.frame_protocol import CloseReason, ParseFailed

    err = map_error(ParseFailed("too big", CloseReason.MESSAGE_TOO_BIG))
    assert err.error_code == "protocol.frame_too_large"
    normal = map_error(ParseFailed("odd", CloseReason.NORMAL_CLOSURE))
    assert normal.error_code == "connection.failed"


@pytest.mark.parametrize(("code", "expected", "retryable"), [
    (None, None, False), (1000, None, False), (1001, None, False), (1005, None, False),
    (1002, "protocol.websocket", False), (1003, "protocol.websocket", False),
    (1007, "protocol.websocket", False), (1008, "protocol.violation", False),
    (1010, "protocol.websocket", False), (1004, "protocol.websocket", False),
    (2999, "protocol.websocket", False), (999, "protocol.websocket", False),
    (5000, "protocol.websocket", False),
    (1009, "protocol.frame_too_large", False),
    (1006, "connection.reset", True),
    (1011, "connection.failed", True), (1014, "connection.failed", True),
    (1012, "connection.closed", True),
    (1013, "connection.refused_by_server", True),
    (1015, "connection.tls_handshake", False),
    (3000, "connection.closed", False), (4999, "connection.closed", False),
])
def test_websocket_close_codes(code: int | None, expected: str | None, retryable: bool) -> None:
    err = map_websocket_close(code, "why", operation="receive", session_id=2)
    if expected is None:
        assert err is None
        return
    assert err is not None
    assert (err.error_code, err.is_retryable()) == (expected, retryable)
    assert (err.operation, err.session_id) == ("receive", 2)
    assert "why" in str(err)
    if isinstance(err, ProtocolError):
        assert err.protocol is Protocol.WEBSOCKET


def test_websocket_close_wording() -> None:
    ours = map_websocket_close(1002, by_peer=False)
    assert ours is not None
    assert str(ours) == "[protocol.websocket] websocket: we closed with 1002 protocol error"
    theirs = map_websocket_close(4001)
    assert theirs is not None
    assert str(theirs) == (
        "[connection.closed] websocket: peer closed with 4001 application code")


@pytest.mark.parametrize(("status", "code", "retryable"), [
    (503, "connection.refused_by_server", True), (429, "connection.refused_by_server", True),
    (500, "connection.handshake", True), (502, "connection.handshake", True),
    (400, "connection.handshake", False), (401, "connection.handshake", False),
    (403, "connection.handshake", False), (404, "connection.handshake", False),
    (301, "connection.handshake", False), (426, "connection.handshake", False),
])
def test_websocket_reject_statuses(status: int, code: str, retryable: bool) -> None:
    err = map_websocket_reject(status, "nope", session_id=4)
    assert (err.error_code, err.is_retryable()) == (code, retryable)
    assert f"HTTP {status}: nope" in str(err)
    assert err.session_id == 4


@pytest.mark.parametrize(("error_code", "frame_type", "by_peer", "code", "retryable"), [
    (0x0, QuicFrameType.PADDING, True, None, False),
    (0x0, None, True, None, False),
    (0x7, None, True, "connection.closed", False),  # application code 7, not FRAME_ENCODING
    (0x1, QuicFrameType.PADDING, True, "connection.failed", True),
    (0x1, QuicFrameType.PADDING, False, "connection.failed", True),
    (0x2, QuicFrameType.PADDING, True, "connection.refused_by_server", True),
    (0x3, QuicFrameType.STREAM_BASE, True, "protocol.quic", False),
    (0x4, QuicFrameType.STREAMS_BLOCKED_BIDI, True, "protocol.quic", False),
    (0x5, QuicFrameType.STREAM_BASE, False, "protocol.quic", False),
    (0x6, QuicFrameType.STREAM_BASE, True, "protocol.quic", False),
    (0x7, QuicFrameType.ACK, True, "protocol.quic", False),
    (0x8, QuicFrameType.CRYPTO, True, "protocol.quic", False),
    (0x9, QuicFrameType.NEW_CONNECTION_ID, True, "protocol.quic", False),
    (0xA, QuicFrameType.PADDING, True, "protocol.quic", False),
    (0xB, QuicFrameType.PADDING, True, "connection.failed", True),
    (0xC, QuicFrameType.PADDING, True, "connection.handshake", True),
    (0xD, QuicFrameType.CRYPTO, True, "protocol.quic", False),
    (0xE, QuicFrameType.PADDING, True, "protocol.quic", False),
    (0xF, QuicFrameType.PADDING, True, "connection.reset", True),
    (0x10, QuicFrameType.PADDING, False, "connection.unreachable", True),
    (0x11, QuicFrameType.PADDING, True, "connection.handshake", False),
    (0x100 + 40, QuicFrameType.CRYPTO, True, "connection.tls_handshake", False),
    (0x100 + 42, QuicFrameType.CRYPTO, True, "connection.tls_verification", False),
    (0x100 + 45, QuicFrameType.CRYPTO, False, "connection.tls_verification", False),
    (0x100 + 47, QuicFrameType.CRYPTO, True, "connection.tls_handshake", False),
    (0x100 + 48, QuicFrameType.CRYPTO, True, "connection.tls_verification", False),
    (0x100 + 116, QuicFrameType.CRYPTO, True, "connection.tls_verification", False),
    (0x100 + 120, QuicFrameType.CRYPTO, True, "connection.tls_handshake", False),
    (0x100 + 200, QuicFrameType.CRYPTO, True, "connection.tls_handshake", False),
    (0x4000, QuicFrameType.PADDING, True, "connection.failed", True),
])
def test_quic_close_codes(error_code: int, frame_type: int | None, by_peer: bool,
                          code: str | None, retryable: bool) -> None:
    err = map_quic_close(error_code, "why", frame_type, by_peer=by_peer, session_id=8)
    if code is None:
        assert err is None
        return
    assert err is not None
    assert (err.error_code, err.is_retryable()) == (code, retryable)
    assert err.session_id == 8
    if isinstance(err, ProtocolError):
        assert err.protocol is Protocol.QUIC


def test_quic_idle_timeout_is_only_ours() -> None:
    idle = map_quic_close(QuicErrorCode.INTERNAL_ERROR, "Idle timeout", QuicFrameType.PADDING,
                          by_peer=False, idle_timeout=30.0)
    assert isinstance(idle, TransportTimeoutError)
    assert (idle.error_code, idle.duration, idle.operation) == ("timeout.idle", 30.0, "idle")
    connecting = map_quic_close(QuicErrorCode.INTERNAL_ERROR, "Idle timeout",
                                QuicFrameType.PADDING, by_peer=False, operation="connect")
    assert connecting is not None
    assert connecting.error_code == "timeout.connect"
    # The same words from the peer are just its reason phrase.
    peer = map_quic_close(QuicErrorCode.INTERNAL_ERROR, "Idle timeout", QuicFrameType.PADDING,
                          by_peer=True)
    assert peer is not None
    assert peer.error_code == "connection.failed"


def test_quic_close_wording() -> None:
    err = map_quic_close(0x100 + 48, "unknown CA", QuicFrameType.CRYPTO, by_peer=True)
    assert err is not None
    assert str(err) == ("[connection.tls_verification] quic: peer closed with error 0x130 "
                        "(TLS alert 48 unknown_ca): unknown CA")
    app = map_quic_close(9, "", None, by_peer=False)
    assert app is not None
    assert str(app) == "[connection.closed] quic: we closed with application code 9"


def test_mapping_does_not_import_event_loops() -> None:
    script = textwrap.dedent("""
        import sys
        import msgtrans.core.errormap as m
        err = m.map_error(TimeoutError())
        assert err.error_code == "timeout.elapsed"
        err = m.map_error(ConnectionRefusedError(111, "refused"))
        assert err.error_code == "connection.refused"
        assert m.map_quic_close(0x12a, "", 6, by_peer=True).error_code == (
            "connection.tls_verification")
        loaded = {"asyncio", "trio", "h11", "wsproto", "aioquic"} & {
            name.split(".")[0] for name in sys.modules}
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)


def test_every_kind_is_reachable() -> None:
    kinds = {case.kind for case in CASES if case.kind is not None}
    assert kinds == set(ErrorKind)
    classes = {ConfigurationError, ProtocolError, ResourceError, TransportConnectionError,
               TransportTimeoutError}
    assert {type(map_error(exc)) for exc in (
        ConnectionRefusedError(), TimeoutError(), MemoryError(),
        OSError(errno.EADDRINUSE, "in use"),
    )} | {ProtocolError} == classes
