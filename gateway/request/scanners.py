"""Streaming scanners of request bodies: the ``_method``-like fields a body carries.

Each scanner takes a body chunk by chunk (:class:`FormScanner`) and answers
the override methods found so far, keeping a few bytes of state whatever the
body's size: ``application/x-www-form-urlencoded`` (and query strings),
``multipart/*``, JSON objects, and any of them behind gzip or deflate. What
counts as an override name is :func:`is_override_name`; the policy that uses
them is :mod:`keygate.gateway.request.overrides`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

import orjson

from keygate.gateway.errors import BadRequest, TooLarge

_FIELD: Final = b"_method"
# The longest a method value is read; longer ones are checked as truncated
# (no rule allows such a method, so the check refuses them).
_MAX_VALUE: Final = 64
# A field name longer than this once leading spaces are gone cannot be
# "_method", however it is percent-encoded (7 escapes of 3 bytes).
_MAX_NAME: Final = 24
# Bound on decoded bytes scanned from a compressed form body.
MAX_DECODED: Final = 16 * 1024 * 1024
# Leading spaces of a field name, raw ("+", " ", "%20"), as PHP drops them.
_LEADING_SPACES: Final = re.compile(rb"(?:\+| |%20)*")
_SEPARATORS: Final = re.compile(rb"[&;]")
_NAME_MAP: Final = bytes.maketrans(b" .[", b"___")


def method_values(value: str) -> list[str]:
    """The methods one override value names: each of its comma-separated tokens
    (Express takes the first, a repeated header arrives joined by commas)."""
    whole = value.strip().upper()
    if "," not in whole:
        return [whole] if whole else []
    return [token for t in whole.split(",") if (token := t.strip())]


def is_override_name(raw: bytes) -> bool:
    """Whether a raw (still percent-encoded) parameter name reads as ``_method``."""
    name = unquote_to_bytes(raw.replace(b"+", b" ")).lstrip(b" ")
    return name.translate(_NAME_MAP).lower() == _FIELD


class FormScanner(Protocol):
    """Takes a body chunk by chunk; answers the override methods found so far."""

    def feed(self, data: bytes) -> list[str]: ...

    def finish(self) -> list[str]: ...



def boundary_of(params: str) -> bytes | None:
    for param in params.split(";"):
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value and value.isascii() and len(value) <= 200:
                return value.encode("ascii")
            return None
    return None


class Urlencoded:
    """``name=value`` fields separated by ``&`` or ``;``, streamed."""

    __slots__ = ("_in_name", "_name", "_name_done", "_skip", "_value", "_value_full")

    def __init__(self) -> None:
        self._in_name = True
        self._name = b""  # raw, leading spaces dropped; bounded by _MAX_NAME
        self._name_done = False  # the name cannot be "_method": skip to the next field
        self._skip = False  # the current field is not an override
        self._value = b""  # raw value of an override field, bounded
        self._value_full = False

    def feed(self, data: bytes) -> list[str]:
        found: list[str] = []
        pos = 0
        end = len(data)
        while pos < end:
            sep = _SEPARATORS.search(data, pos)
            stop = sep.start() if sep else end
            self._segment(data[pos:stop])
            if sep is None:
                break
            found += self._end_field()
            pos = stop + 1
        return found

    def finish(self) -> list[str]:
        return self._end_field()

    def _segment(self, part: bytes) -> None:
        """Bytes of the current field, without separators."""
        if self._in_name:
            eq = part.find(b"=")
            name_part = part if eq < 0 else part[:eq]
            if not self._name_done:
                name = self._name + name_part
                # Leading spaces go (also when an escape was split across chunks).
                spaces = _LEADING_SPACES.match(name)
                if spaces is not None and spaces.end():
                    name = name[spaces.end() :]
                if len(name) > _MAX_NAME:
                    self._name_done, self._skip, name = True, True, b""
                self._name = name
            if eq < 0:
                return
            self._in_name = False
            if not self._skip:
                self._skip = not is_override_name(self._name)
            part = part[eq + 1 :]
        if not self._skip and not self._value_full:
            value = self._value + part
            if len(value) > _MAX_VALUE * 3:
                value, self._value_full = value[: _MAX_VALUE * 3], True
            self._value = value

    def _end_field(self) -> list[str]:
        # A field without "=" has an empty value, which names no method.
        found: list[str] = []
        if not self._in_name and not self._skip:
            raw = unquote_to_bytes(self._value.replace(b"+", b" "))[:_MAX_VALUE]
            found = method_values(raw.decode("latin-1"))
        self._in_name, self._name, self._name_done = True, b"", False
        self._skip, self._value, self._value_full = False, b"", False
        return found


# Where a multipart scanner is: before the first delimiter, on a delimiter
# line, in a part's header block, in a part's content, or past the end.
_PREAMBLE, _DELIMITER_LINE, _HEADERS, _CONTENT, _EPILOGUE = range(5)
_MAX_PART_HEAD: Final = 16 * 1024
_HEAD_END: Final = re.compile(rb"(?:^|\n)\r?\n")
_FOLD: Final = re.compile(rb"\r?\n[ \t]+")
_DISPOSITION_NAME: Final = re.compile(
    rb"""(?i)(?:^|[;\s])name(\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)"""
)


class Multipart:
    """``multipart/*`` parts, streamed: the content of any part named like ``_method``.

    Lenient on purpose: a delimiter may follow LF alone (or directly a part's
    header block) and its line may end in LF alone; a header block may end in
    a bare blank line and fold its lines. Finding more parts than a strict
    parser would only adds checks; finding fewer would be a bypass.
    """

    __slots__ = ("_buffer", "_delimiter", "_is_override", "_state", "_value")

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\n--" + boundary
        self._buffer = b"\n"  # a delimiter at the very start follows a line end
        self._state = _PREAMBLE
        self._is_override = False
        self._value = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        found: list[str] = []
        while True:
            state = self._state
            if state in (_PREAMBLE, _CONTENT):
                buffer = self._buffer
                at = buffer.find(self._delimiter)
                if at < 0:
                    # Keep what may be the start of a delimiter split across chunks.
                    keep = len(self._delimiter) - 1
                    if len(buffer) > keep:
                        self._content(buffer[:-keep])
                        self._buffer = buffer[-keep:]
                    return found
                after = at + len(self._delimiter)
                if len(buffer) < after + 2:
                    # "--" (the close delimiter) or not: not known yet.
                    self._content(buffer[:at])
                    self._buffer = buffer[at:]
                    return found
                self._content(buffer[:at])
                found += self._end_part()
                if buffer[after : after + 2] == b"--":
                    self._state, self._buffer = _EPILOGUE, b""
                    return found
                self._state, self._buffer = _DELIMITER_LINE, buffer[after:]
            elif state == _DELIMITER_LINE:
                # Transport padding up to the line end.
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > _MAX_PART_HEAD:
                        raise BadRequest("A form body delimiter line is too long.")
                    return found
                self._state, self._buffer = _HEADERS, self._buffer[end + 1 :]
            elif state == _HEADERS:
                match = _HEAD_END.search(self._buffer)
                if match is None:
                    if len(self._buffer) > _MAX_PART_HEAD:
                        raise BadRequest("A form body part's header block is too large.")
                    return found
                head = _FOLD.sub(b" ", self._buffer[: match.start()])
                self._is_override = any(
                    _disposition_names_override(line)
                    for line in head.split(b"\n")
                    if line.lstrip()[:19].lower() == b"content-disposition"
                )
                self._value = b""
                # The line end before the content starts any delimiter that
                # follows at once: a part with no content at all.
                self._state, self._buffer = _CONTENT, b"\n" + self._buffer[match.end() :]
            else:  # _EPILOGUE: nothing after the close delimiter is a field
                self._buffer = b""
                return found

    def finish(self) -> list[str]:
        if self._state == _CONTENT:
            buffer, self._buffer = self._buffer, b""
            at = buffer.find(self._delimiter)  # a last delimiter with nothing after it
            self._content(buffer if at < 0 else buffer[:at])
            return self._end_part()
        return []

    def _content(self, data: bytes) -> None:
        if self._state == _CONTENT and self._is_override and len(self._value) < _MAX_VALUE:
            self._value = (self._value + data)[:_MAX_VALUE]

    def _end_part(self) -> list[str]:
        found: list[str] = []
        if self._state == _CONTENT and self._is_override:
            found = method_values(self._value.decode("latin-1"))
        self._is_override, self._value = False, b""
        return found


def _disposition_names_override(line: bytes) -> bool:
    for star, raw in _DISPOSITION_NAME.findall(line.partition(b":")[2]):
        value = raw
        if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
        if star:
            # RFC 8187 ext-value: charset'language'percent-encoded
            value = value.split(b"'", 2)[-1]
        if is_override_name(value.replace(b"+", b"%2B")) or is_override_name(value):
            return True
    return False


# Where a JSON scanner is, at the top level of an object.
(_START, _KEY_OR_END, _KEY, _COLON, _VALUE, _STRING, _NESTED, _NESTED_STRING, _NEXT, _DONE) = (
    range(10)
)
_SPACE: Final = re.compile(rb"[ \t\r\n]*")
_QUOTE_OR_ESCAPE: Final = re.compile(rb'["\\]')
_NESTING: Final = re.compile(rb'["{}\[\]]')
_SCALAR_END: Final = re.compile(rb"[,}\] \t\r\n]")


class JsonObject:
    """A JSON body, streamed: the string values of its top-level ``_method``-like keys.

    Only the top level is read (as Laravel reads it); nested values and
    other strings are skipped with regular-expression scans, so a large
    document costs little. Anything that is not an object, or stops being
    valid JSON, ends the scan: a framework could not read a field from it
    either.
    """

    __slots__ = ("_buffer", "_depth", "_is_override", "_raw", "_state")

    def __init__(self) -> None:
        self._buffer = b""
        self._state = _START
        self._raw = b""  # the current key, or an override's value, still JSON-escaped
        self._is_override = False
        self._depth = 0

    def feed(self, data: bytes) -> list[str]:
        buffer = self._buffer + data if self._buffer else data
        found: list[str] = []
        pos = self._step(buffer, 0, found)
        self._buffer = buffer[pos:] if self._state != _DONE else b""
        return found

    def finish(self) -> list[str]:
        return []  # a value is only complete once its closing quote was seen

    def _step(self, buffer: bytes, pos: int, found: list[str]) -> int:
        end = len(buffer)
        while pos < end:
            state = self._state
            if state in (_START, _KEY_OR_END, _COLON, _VALUE, _NEXT):
                pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    return pos
                char = buffer[pos : pos + 1]
                pos += 1
                if state == _START:
                    self._state = _KEY_OR_END if char == b"{" else _DONE
                elif state == _KEY_OR_END:
                    if char == b'"':
                        self._state, self._raw = _KEY, b""
                    elif char != b",":
                        self._state = _DONE
                elif state == _COLON:
                    self._state = _VALUE if char == b":" else _DONE
                elif state == _VALUE:
                    if char == b'"':
                        self._state, self._raw = _STRING, b""
                    elif char in (b"{", b"["):
                        self._state, self._depth = _NESTED, 1
                    else:
                        scalar_end = _SCALAR_END.search(buffer, pos)
                        if scalar_end is None:
                            return pos - 1  # the scalar may go on in the next chunk
                        self._state, pos = _NEXT, scalar_end.start()
                else:  # _NEXT
                    self._state = _KEY_OR_END if char == b"," else _DONE
            elif state in (_KEY, _STRING, _NESTED_STRING):
                stop = _QUOTE_OR_ESCAPE.search(buffer, pos)
                if stop is None:
                    self._collect(state, buffer[pos:])
                    return end
                at = stop.start()
                if buffer[at : at + 1] == b"\\":
                    if at + 1 >= end:
                        self._collect(state, buffer[pos:at])
                        return at  # the escaped byte comes in the next chunk
                    self._collect(state, buffer[pos : at + 2])
                    pos = at + 2
                    continue
                self._collect(state, buffer[pos:at])
                pos = at + 1
                if state == _KEY:
                    self._is_override = _json_name_is_override(self._raw)
                    self._state = _COLON
                elif state == _STRING:
                    if self._is_override:
                        found += method_values(_json_string(self._raw))
                    self._state = _NEXT
                else:
                    self._state = _NESTED
            elif state == _NESTED:
                mark = _NESTING.search(buffer, pos)
                if mark is None:
                    return end
                pos = mark.end()
                char = mark.group()
                if char == b'"':
                    self._state = _NESTED_STRING
                elif char in (b"{", b"["):
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self._state = _NEXT
            else:  # _DONE
                return end
        return pos

    def _collect(self, state: int, data: bytes) -> None:
        wanted = state == _KEY or (state == _STRING and self._is_override)
        if wanted and len(self._raw) < _MAX_VALUE * 6:
            self._raw += data[: _MAX_VALUE * 6]


def _json_string(raw: bytes) -> str:
    try:
        value = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw.decode("latin-1")  # cut short: checked as it stands
    return value if isinstance(value, str) else ""


def _json_name_is_override(raw: bytes) -> bool:
    name = _json_string(raw).lstrip(" ")
    return name.translate(str.maketrans(" .[", "___")).lower() == "_method"


class Inflating:
    """A form scanner behind gzip or deflate decoding, with a bound on its output."""

    __slots__ = ("_decoded", "_inflater", "_inner")

    def __init__(self, inner: FormScanner) -> None:
        self._inner = inner
        # 32 + 15: a gzip or zlib header, detected.
        self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
        self._decoded = 0

    def feed(self, data: bytes) -> list[str]:
        found: list[str] = []
        for chunk in self._inflate(data):
            found += self._inner.feed(chunk)
        return found

    def finish(self) -> list[str]:
        found: list[str] = []
        for chunk in self._inflate(b""):
            found += self._inner.feed(chunk)
        return found + self._inner.finish()

    def _inflate(self, data: bytes) -> Iterable[bytes]:
        """Decoded chunks of ``data``, at most 64 KiB each, until the input is used
        up and nothing more comes out (``decompress`` with a bound may hold
        output back: it is drained here, never by an unbounded ``flush``)."""
        inflater = self._inflater
        step = 1 << 16
        while not inflater.eof:
            try:
                out = inflater.decompress(data, step)
            except zlib.error as exc:
                raise BadRequest("The request body could not be decoded.") from exc
            self._decoded += len(out)
            if self._decoded > MAX_DECODED:
                raise TooLarge("The decoded request body is too large to check.")
            if out:
                yield out
            data = inflater.unconsumed_tail
            if not data and len(out) < step:
                return
