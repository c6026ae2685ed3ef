"""The error type: the five kinds and their fields, builtin bases, retryability and delays, stable
codes, enriched copies, pickling, the message format, and the docs listing every code."""

from __future__ import annotations

import pathlib
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import msgtrans.core.errormap as errormap
from msgtrans.core.errors import (
    ERROR_CODES,
    ConfigurationError,
    ErrorKind,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "errors.md"

# Codes are public API (logs, metrics labels, alert rules): this list may grow, never shrink.
STABLE_CODES = [
    "connection.failed", "connection.refused", "connection.reset", "connection.aborted",
    "connection.closed", "connection.unreachable", "connection.dns",
    "connection.tls_verification", "connection.tls_handshake", "connection.handshake",
    "connection.refused_by_server",
    "protocol.violation", "protocol.bad_version", "protocol.bad_compression",
    "protocol.bad_packet_type", "protocol.bad_length", "protocol.frame_too_large",
    "protocol.decompression", "protocol.unexpected_eof", "protocol.tls", "protocol.websocket",
    "protocol.quic", "protocol.text_frame", "protocol.backplane",
    "configuration.invalid", "configuration.missing_dependency",
    "configuration.address_in_use", "configuration.address_unavailable",
    "configuration.permission",
    "resource.exhausted", "resource.memory", "resource.payload_too_large",
    "resource.file_descriptors", "resource.backpressure", "resource.pool_exhausted",
    "timeout.elapsed", "timeout.connect", "timeout.request", "timeout.handshake",
    "timeout.idle", "timeout.keepalive", "timeout.close", "timeout.send", "timeout.first_packet",
]

CLASS_OF_KIND: dict[ErrorKind, type[TransportError]] = {
    ErrorKind.CONNECTION: TransportConnectionError,
    ErrorKind.PROTOCOL: ProtocolError,
    ErrorKind.CONFIGURATION: ConfigurationError,
    ErrorKind.RESOURCE: ResourceError,
    ErrorKind.TIMEOUT: TransportTimeoutError,
}

# One way to build each kind; keyword arguments (code, retryable, session...) pass through.
BUILD: dict[type[TransportError], Callable[..., TransportError]] = {
    TransportConnectionError: lambda **kw: TransportConnectionError("peer went away", **kw),
    ProtocolError: lambda **kw: ProtocolError(Protocol.WIRE, "bad header", **kw),
    ConfigurationError: lambda **kw: ConfigurationError("port", "must be 1..65535", **kw),
    ResourceError: lambda **kw: ResourceError("memory", 2048, 1024, **kw),
    TransportTimeoutError: lambda **kw: TransportTimeoutError("request", 1.5, **kw),
}
CLASSES = list(BUILD)


def build(cls: type[TransportError], **kwargs: Any) -> TransportError:
    return BUILD[cls](**kwargs)


def kind_of(code: str) -> ErrorKind:
    return ErrorKind(code.split(".", 1)[0])


# --- the kinds and their fields ----------------------------------------------------------------


def test_fields_of_each_kind() -> None:
    conn = TransportConnectionError("peer went away", retryable=False)
    assert (conn.kind, conn.reason, conn.retryable) == (ErrorKind.CONNECTION, "peer went away",
                                                        False)
    proto = ProtocolError("websocket", "unmasked frame")
    assert (proto.kind, proto.protocol, proto.reason) == (
        ErrorKind.PROTOCOL, Protocol.WEBSOCKET, "unmasked frame")
    config = ConfigurationError("port", "must be 1..65535")
    assert (config.kind, config.field, config.reason) == (
        ErrorKind.CONFIGURATION, "port", "must be 1..65535")
    res = ResourceError("memory", 2048, 1024)
    assert (res.kind, res.resource, res.current, res.limit) == (
        ErrorKind.RESOURCE, "memory", 2048, 1024)
    assert res.reason == "memory limit reached"
    timeout = TransportTimeoutError("request", 2)
    assert (timeout.kind, timeout.operation, timeout.duration) == (
        ErrorKind.TIMEOUT, "request", 2.0)
    assert isinstance(timeout.duration, float)
    assert timeout.reason == "request did not complete within 2 s"
    for err in (conn, proto, config, res, timeout):
        assert err.session_id is None
        assert CLASS_OF_KIND[err.kind] is type(err)
    assert conn.operation is None


def test_every_kind_has_its_class() -> None:
    assert set(CLASS_OF_KIND) == set(ErrorKind)
    assert {cls.kind for cls in CLASSES} == set(ErrorKind)


def test_protocol_names() -> None:
    assert ProtocolError("quic", "x").protocol is Protocol.QUIC
    assert str(Protocol.TLS) == "tls"
    assert str(ErrorKind.TIMEOUT) == "timeout"
    with pytest.raises(ValueError, match="smoke-signals"):
        ProtocolError("smoke-signals", "x")


# --- builtin catchability ----------------------------------------------------------------------


def test_connection_errors_are_builtin_connection_errors() -> None:
    with pytest.raises(ConnectionError):
        raise TransportConnectionError("reset", code="connection.reset")
    with pytest.raises(OSError, match=r"\[connection.reset\]"):
        raise TransportConnectionError("reset", code="connection.reset")


def test_timeouts_are_builtin_timeout_errors() -> None:
    with pytest.raises(TimeoutError):
        raise TransportTimeoutError("connect", 3.0, code="timeout.connect")
    err = TransportTimeoutError("connect", 3.0)
    assert isinstance(err, OSError)
    assert err.errno is None


def test_configuration_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="port: must be"):
        raise ConfigurationError("port", "must be 1..65535")


def test_protocol_and_resource_errors_are_only_ours() -> None:
    for err in (build(ProtocolError), build(ResourceError)):
        assert not isinstance(err, (OSError, ValueError, TimeoutError))
    for cls in CLASSES:
        err = build(cls)
        assert isinstance(err, TransportError)
        assert isinstance(err, Exception)
        with pytest.raises(TransportError):
            raise err


# --- retryability and delays -------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "code", "retryable", "delay"), [
    (TransportConnectionError, "connection.failed", True, 1.0),
    (ProtocolError, "protocol.violation", False, None),
    (ConfigurationError, "configuration.invalid", False, None),
    (ResourceError, "resource.exhausted", True, 0.1),
    (TransportTimeoutError, "timeout.elapsed", True, 0.5),
])
def test_defaults_per_kind(cls: type[TransportError], code: str, retryable: bool,
                           delay: float | None) -> None:
    err = build(cls)
    assert err.error_code == code
    assert err.is_retryable() is retryable
    assert err.retryable is retryable
    assert err.retry_delay() == delay


@pytest.mark.parametrize("cls", CLASSES)
def test_not_retryable_means_no_delay(cls: type[TransportError]) -> None:
    err = build(cls, retryable=False, retry_after=9.0)
    assert not err.is_retryable()
    assert err.retry_delay() is None


@pytest.mark.parametrize("cls", [TransportConnectionError, ResourceError, TransportTimeoutError])
def test_retry_after_overrides_the_default_delay(cls: type[TransportError]) -> None:
    assert build(cls, retry_after=7.5).retry_delay() == 7.5
    assert build(cls, retryable=True, retry_after=0.0).retry_delay() == 0.0


def test_verification_failures_are_not_retryable_when_built_so() -> None:
    err = TransportConnectionError("bad certificate", code="connection.tls_verification",
                                   retryable=False)
    assert (err.is_retryable(), err.retry_delay()) == (False, None)


# --- codes -------------------------------------------------------------------------------------


def test_codes_are_stable() -> None:
    missing = [code for code in STABLE_CODES if code not in ERROR_CODES]
    assert missing == [], "error codes are API: never rename or remove one"


def test_codes_are_well_formed_and_explained() -> None:
    for code, meaning in ERROR_CODES.items():
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", code), code
        kind_of(code)  # every prefix is a kind
        assert meaning
        assert meaning == meaning.strip()


def test_each_class_default_code_belongs_to_its_kind() -> None:
    for cls in CLASSES:
        err = build(cls)
        assert kind_of(err.error_code) is err.kind


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_code_can_be_raised_by_its_kind(code: str) -> None:
    err = build(CLASS_OF_KIND[kind_of(code)], code=code)
    assert err.error_code == code
    assert str(err).startswith(f"[{code}] ")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("code", ["nope", "connection.nope", "CONNECTION.FAILED", " timeout.idle"])
def test_unknown_code_is_rejected(cls: type[TransportError], code: str) -> None:
    with pytest.raises(ValueError, match="unknown msgtrans error code"):
        build(cls, code=code)


# --- the message -------------------------------------------------------------------------------


def test_message_format_of_each_kind() -> None:
    assert str(TransportConnectionError("refused", code="connection.refused")) == (
        "[connection.refused] refused")
    assert str(ProtocolError(Protocol.TLS, "bad record")) == (
        "[protocol.violation] tls: bad record")
    assert str(ConfigurationError("url", "unsupported scheme 'ftp'")) == (
        "[configuration.invalid] url: unsupported scheme 'ftp'")
    assert str(ResourceError("payload", 20, 16, "payload too large to send",
                             code="resource.payload_too_large", retryable=False)) == (
        "[resource.payload_too_large] payload too large to send (payload: 20, limit 16)")
    assert str(TransportTimeoutError("request", 5)) == (
        "[timeout.elapsed] request did not complete within 5 s (operation request)")
    assert str(TransportTimeoutError("connect", 0.25, "SYN unanswered",
                                     code="timeout.connect")) == (
        "[timeout.connect] SYN unanswered (operation connect)")


def test_message_names_the_context() -> None:
    err = TransportConnectionError("reset", code="connection.reset", session_id=12,
                                   operation="send")
    assert str(err) == "[connection.reset] reset (operation send, session 12)"
    assert err.args == (str(err),)
    assert repr(err).startswith("TransportConnectionError(")


# --- enriched copies ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_with_session_returns_an_enriched_copy(cls: type[TransportError]) -> None:
    original = build(cls)
    cause = KeyError("root")
    original.__cause__ = cause
    before = str(original)
    copy = original.with_session(42)
    assert copy is not original
    assert type(copy) is cls
    assert copy.session_id == 42
    assert original.session_id is None
    assert str(original) == before
    assert "session 42" in str(copy)
    assert copy.args == (str(copy),)
    assert copy.__cause__ is cause
    assert (copy.error_code, copy.is_retryable(), copy.retry_delay(), copy.reason) == (
        original.error_code, original.is_retryable(), original.retry_delay(), original.reason)


@pytest.mark.parametrize("cls", CLASSES)
def test_with_operation_returns_an_enriched_copy(cls: type[TransportError]) -> None:
    original = build(cls)
    copy = original.with_operation("send")
    assert copy is not original
    assert type(copy) is cls
    assert copy.operation == "send"
    assert "operation send" in str(copy)
    assert original.operation == ("request" if cls is TransportTimeoutError else None)
    both = copy.with_session("abc")
    assert (both.operation, both.session_id) == ("send", "abc")
    assert str(both).endswith("(operation send, session abc)")
    assert copy.session_id is None


def test_enriched_copy_keeps_the_kind_fields() -> None:
    res = ResourceError("sessions", 11, 10, code="resource.pool_exhausted").with_session(1)
    assert (res.resource, res.current, res.limit) == ("sessions", 11, 10)
    proto = ProtocolError("quic", "bad stream").with_operation("receive")
    assert proto.protocol is Protocol.QUIC
    config = ConfigurationError("addr", "in use", code="configuration.address_in_use")
    assert config.with_session(3).field == "addr"


def test_enriched_copy_can_be_raised_and_caught_as_before() -> None:
    with pytest.raises(TimeoutError) as caught:
        raise TransportTimeoutError("connect", 1.0).with_session(5)
    assert isinstance(caught.value, TransportTimeoutError)
    assert caught.value.session_id == 5


# --- pickling ----------------------------------------------------------------------------------


def same(a: TransportError, b: TransportError) -> bool:
    return (type(a), str(a), a.args, a.error_code, a.retryable, a.retry_delay(), a.reason,
            a.session_id, a.operation) == (type(b), str(b), b.args, b.error_code, b.retryable,
                                           b.retry_delay(), b.reason, b.session_id, b.operation)


@pytest.mark.parametrize("cls", CLASSES)
def test_pickle_round_trip(cls: type[TransportError]) -> None:
    for err in (build(cls), build(cls, retry_after=3.0).with_session(9).with_operation("send")):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(err, protocol=proto))
            assert same(back, err)
            assert back.__dict__ == err.__dict__


_reasons = st.text(max_size=40)
_sessions = st.one_of(st.integers(), st.text(max_size=10))
_operations = st.text(min_size=1, max_size=12)


@given(code=st.sampled_from(sorted(ERROR_CODES)), reason=_reasons, session=_sessions,
       operation=_operations, retryable=st.one_of(st.none(), st.booleans()),
       retry_after=st.one_of(st.none(), st.floats(0, 60)))
def test_any_error_survives_pickling_and_enrichment(
    code: str, reason: str, session: int | str, operation: str, retryable: bool | None,
    retry_after: float | None,
) -> None:
    kwargs: dict[str, Any] = {"code": code, "retryable": retryable, "retry_after": retry_after}
    make: dict[ErrorKind, Callable[[], TransportError]] = {
        ErrorKind.CONNECTION: lambda: TransportConnectionError(reason, **kwargs),
        ErrorKind.PROTOCOL: lambda: ProtocolError(Protocol.WIRE, reason, **kwargs),
        ErrorKind.CONFIGURATION: lambda: ConfigurationError("field", reason, **kwargs),
        ErrorKind.RESOURCE: lambda: ResourceError("memory", 1, 0, reason or None, **kwargs),
        ErrorKind.TIMEOUT: lambda: TransportTimeoutError("io", 1.0, reason or None, **kwargs),
    }
    err = make[kind_of(code)]()
    assert err.error_code == code
    if retryable is False:
        assert err.retry_delay() is None
    enriched = err.with_session(session).with_operation(operation)
    assert str(enriched).startswith(f"[{code}] ")
    assert str(enriched).endswith(f"(operation {operation}, session {session})")
    assert (enriched.is_retryable(), enriched.retry_delay()) == (
        err.is_retryable(), err.retry_delay())
    back = pickle.loads(pickle.dumps(enriched))
    assert same(back, enriched)
    assert err.session_id is None


# --- the docs ----------------------------------------------------------------------------------


def test_docs_list_every_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.MULTILINE))
    assert rows == set(ERROR_CODES), "docs/errors.md must have one table row per error code"
    for code in ERROR_CODES:
        assert f"`{code}`" in text


def test_docs_name_every_class_and_mapping_function() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in ["TransportError", "ErrorKind", "Protocol", *(cls.__name__ for cls in CLASSES),
                 *errormap.__all__]:
        assert name in text, name


def test_public_names_are_documented() -> None:
    import msgtrans.core.errors as errors

    for module in (errors, errormap):
        assert module.__doc__
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
