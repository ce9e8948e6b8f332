"""How stored outcomes are turned into bytes and back.

A codec encodes one *envelope* per call: ``{"v": 1, "result": value}`` for a returned
value, ``{"v": 1, "error": {"type": ..., "mro": [...], "message": ...}}`` for a known
failure. Exceptions are never serialised as objects, whatever the codec: only their
qualified type name, the names of their base classes and ``str(exc)`` are stored, and
on replay only the exception types the guard was given are rebuilt (see
:func:`error_record` and :func:`rebuild_error`).

- :class:`JsonCodec` (default): the standard library's ``json``. Replayed values are what
  JSON round-trips: a tuple comes back as a list, dict keys as strings.
- :class:`OrjsonCodec`, :class:`MsgspecCodec`: the same JSON, faster, when ``orjson`` or
  ``msgspec`` is installed (imported when the codec is created).
- :class:`PickleCodec`: any picklable result, **only for stores nobody else can write
  to**: unpickling data from a compromised store runs arbitrary code.
"""

from __future__ import annotations

import importlib
import json
import pickle
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Codec",
    "JsonCodec",
    "OrjsonCodec",
    "MsgspecCodec",
    "PickleCodec",
    "error_record",
    "rebuild_error",
]


@runtime_checkable
class Codec(Protocol):
    """Turns a stored envelope (a dict of plain values) into bytes and back."""

    name: str

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``; raises ``TypeError``/``ValueError`` if it cannot."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value encoded in ``data``."""
        ...


_decode_json = json.JSONDecoder().decode


class JsonCodec:
    """JSON with the standard library (the default)."""

    name = "json"
    __slots__ = ()

    def encode(self, value: Any) -> bytes:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    def decode(self, data: bytes) -> Any:
        # What encode wrote is UTF-8: decoding it directly skips json.loads's guessing
        # of the encoding (UTF-16, UTF-32, a BOM), which is left for anything else.
        try:
            return _decode_json(data.decode())
        except ValueError:
            return json.loads(data)

    def __repr__(self) -> str:
        return "JsonCodec()"


class OrjsonCodec:
    """JSON with ``orjson`` (``pip install orjson``)."""

    name = "orjson"
    __slots__ = ("_dumps", "_loads")

    def __init__(self) -> None:
        orjson: Any = importlib.import_module("orjson")
        self._dumps = orjson.dumps
        self._loads = orjson.loads

    def encode(self, value: Any) -> bytes:
        out: bytes = self._dumps(value)
        return out

    def decode(self, data: bytes) -> Any:
        return self._loads(data)

    def __repr__(self) -> str:
        return "OrjsonCodec()"


class MsgspecCodec:
    """JSON with ``msgspec`` (``pip install msgspec``)."""

    name = "msgspec"
    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        msgspec: Any = importlib.import_module("msgspec.json")
        self._encoder = msgspec.Encoder()
        self._decoder = msgspec.Decoder()

    def encode(self, value: Any) -> bytes:
        out: bytes = self._encoder.encode(value)
        return out

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)

    def __repr__(self) -> str:
        return "MsgspecCodec()"


class PickleCodec:
    """``pickle``: any picklable result.

    .. warning::
       Decoding runs code chosen by whoever wrote the bytes. Use it only with a store
       that no one but your own application can write to.
    """

    name = "pickle"
    __slots__ = ("protocol",)

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=self.protocol)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(f"cannot pickle the outcome: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)  # chosen explicitly by the user; see the warning

    def __repr__(self) -> str:
        return "PickleCodec()"


def qualified_name(cls: type) -> str:
    """``module.QualName``, or just ``QualName`` for builtins."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_record(exc: BaseException) -> dict[str, Any]:
    """What is stored of a known failure: type name, base class names and message."""
    mro = [
        qualified_name(c)
        for c in type(exc).__mro__[1:]
        if c not in (BaseException, Exception, object)
    ]
    return {"type": qualified_name(type(exc)), "mro": mro, "message": str(exc)}


def rebuild_error(
    record: dict[str, Any], allowed: dict[str, type[BaseException]]
) -> BaseException | None:
    """Rebuild a stored failure as the most derived allowed type, or ``None``.

    ``allowed`` maps qualified names to the exception types the guard may instantiate; a
    name found nowhere in it is never imported or looked up anywhere else. The type is
    called with the stored message as its only argument; a type that refuses that
    (needs more arguments) gives ``None`` too.
    """
    message = str(record.get("message", ""))
    names = [record.get("type"), *record.get("mro", ())]
    for name in names:
        cls = allowed.get(name) if isinstance(name, str) else None
        if cls is None:
            continue
        try:
            return cls(message)
        except Exception:
            return None
    return None
