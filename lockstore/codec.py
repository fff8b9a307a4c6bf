"""Value codecs (pickle, json, msgpack) and record signing, for one store.

A :class:`Codec` turns a value into a record (see :mod:`lockstore.record` for the format) and back. With a
secret, a 32-byte HMAC-SHA256 over the store's scope (an identity recorded when the store was created: a
signed record cannot be replayed into another store that shares the secret), the session id, the header and
the payload follows the header, and a record whose MAC does not hold is never decoded. Stores created before
scopes existed have an empty scope, and their MAC input is the one they always had.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from . import record as fmt
from .errors import CorruptRecord, EncodeError, StoreMismatch, ValueTooLarge

_pack_header = fmt.pack_header
# the format's constants, bound here for the hot paths below (the format itself is lockstore.record's)
_HEADER_SIZE = fmt.HEADER_SIZE
_MAC_SIZE = fmt.MAC_SIZE
_VERSION = fmt.VERSION
_FLAG_SIGNED = fmt.FLAG_SIGNED


class Record(NamedTuple):
    """A live session as stored: its value and its times (seconds since the epoch)."""

    value: Any
    created: float
    last_access: float


def _json_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError:  # pragma: no cover - depends on the environment
        raise StoreMismatch("codec 'msgpack' needs the msgpack package: pip install 'lockstore[msgpack]'") from None
    return msgpack


def codec_functions(name: str) -> tuple[Callable[[Any], bytes], Callable[[Any], Any]]:
    """The (encode, decode) pair of a codec by name."""
    if name == "pickle":
        return functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads  # no Python frame
    if name == "json":
        return _json_dumps, lambda b: json.loads(bytes(b))
    if name == "msgpack":
        msgpack = _msgpack()
        return (lambda v: msgpack.packb(v, use_bin_type=True)), (lambda b: msgpack.unpackb(b, raw=False))
    raise StoreMismatch(f"unknown codec {name!r}: use 'pickle', 'json' or 'msgpack'")


def check_secret(secret: bytes | str | None) -> bytes | None:
    """*secret* as bytes, or None; ``TypeError``/``ValueError`` if it cannot sign records."""
    if isinstance(secret, str):
        secret = secret.encode()
    if secret is not None and not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
    if secret is not None and len(secret) < 16:
        raise ValueError("secret must be at least 16 bytes")
    return secret


class Codec:
    """Turns values into records and back, for one store (codec, optional secret, size limit)."""

    def __init__(self, name: str, secret: bytes | str | None, max_value_size: int, *, scope: bytes = b"") -> None:
        self.name = name
        self._dumps, self._loads = codec_functions(name)
        secret = check_secret(secret)
        self._secret = secret
        self.signed = secret is not None
        self.scope = scope
        # MAC input: [NUL, scope length (2 bytes), scope] id NUL header payload. An id never starts with
        # NUL, so a scoped MAC can never equal the unscoped one of an older store.
        if len(scope) > 0xFFFF:
            raise ValueError("scope must be at most 65535 bytes")
        self._mac_base = None if secret is None else hmac.new(secret, digestmod=hashlib.sha256)
        if self._mac_base is not None and scope:
            self._mac_base.update(b"\0" + len(scope).to_bytes(2, "big") + scope)
        self.max_value_size = max_value_size
        self.plain_loads = self._loads if secret is None else None
        """The decoder of an unsigned store, for the readers that inline the common case of :meth:`decode`."""

    def encode(self, value: object) -> bytes:
        """The payload of *value*; :class:`EncodeError` or :class:`ValueTooLarge` if it cannot be stored."""
        try:
            payload = self._dumps(value)
        except Exception as exc:  # pickle and json raise many types; all mean the same here
            raise EncodeError(f"cannot encode {type(value).__name__} with codec {self.name!r}: {exc}") from None
        if len(payload) > self.max_value_size:
            raise ValueTooLarge(f"encoded value is {len(payload)} bytes, over max_value_size={self.max_value_size}")
        return payload

    def _mac(self, key: bytes, header: bytes | memoryview, payload: bytes | memoryview) -> bytes:
        assert self._mac_base is not None
        mac = self._mac_base.copy()
        mac.update(key)
        mac.update(b"\0")
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def record(self, key: bytes, payload: bytes | memoryview, last_access: float, created: float) -> bytes:
        """A whole record for the id *key* (UTF-8 bytes)."""
        if self._secret is None:
            return _pack_header(_VERSION, 0, last_access, created) + payload
        header = _pack_header(_VERSION, _FLAG_SIGNED, last_access, created)
        return header + self._mac(key, header, payload) + payload

    def retime(self, key: bytes, rec: bytes | memoryview, last_access: float) -> bytes:
        """*rec* with a new last-access time and the same payload (re-signed when signed)."""
        _, created = fmt.times(rec)
        return self.record(key, self.payload(key, rec), last_access, created)

    def payload(self, key: bytes, rec: bytes | memoryview) -> memoryview:
        """The payload of a record, its header and signature checked."""
        fmt.times(rec)  # length, version, finite times
        return self.body(key, rec)

    def body(self, key: bytes, rec: bytes | memoryview) -> memoryview:
        """The payload of a record whose header :func:`lockstore.record.times` accepted, its signature checked
        (for callers that parsed the header already: it is not parsed twice)."""
        view = memoryview(rec)
        if rec[1] & _FLAG_SIGNED:
            if self._secret is None:
                raise CorruptRecord("record is signed but the store was opened without its secret")
            mac = view[_HEADER_SIZE : _HEADER_SIZE + _MAC_SIZE]
            body = view[_HEADER_SIZE + _MAC_SIZE :]
            if not hmac.compare_digest(mac, self._mac(key, view[:_HEADER_SIZE], body)):
                raise CorruptRecord("record signature does not hold (tampered, or another secret)")
            return body
        if self._secret is not None:
            raise CorruptRecord("record is not signed but the store has a secret: refusing to decode it")
        return view[_HEADER_SIZE:]

    def loads(self, body: bytes | memoryview, key: bytes) -> Any:
        """Decode a payload already checked by :meth:`payload`."""
        try:
            return self._loads(body)
        except Exception as exc:
            sid = key.decode(errors="replace")[:24]
            raise CorruptRecord(f"record of {sid!r} does not decode with codec {self.name!r}: {exc}") from None

    def open(self, key: bytes, rec: bytes) -> tuple[bytes | memoryview, Any]:
        """(payload, value) of a record whose header :func:`lockstore.record.times` accepted: one slice, one
        decode (``edit()`` keeps the payload to tell whether the value changed)."""
        if self._secret is None and rec[1] == 0:
            body: bytes | memoryview = rec[_HEADER_SIZE:]
        else:
            body = self.body(key, rec)
        return body, self.loads(body, key)

    def decode(self, key: bytes, rec: bytes | memoryview) -> Any:
        """The value of a record, never decoding a payload whose signature fails."""
        if self._secret is None and len(rec) > _HEADER_SIZE and rec[0] == _VERSION and rec[1] == 0:
            try:  # the common case, unsigned: one slice, one decode
                return self._loads(rec[_HEADER_SIZE:])
            except Exception:
                pass  # the slow path below says what is wrong
        return self.loads(self.payload(key, rec), key)
