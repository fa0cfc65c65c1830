"""Streaming scanners of request bodies: the ``_method``-like fields a body carries.

Each scanner takes a body chunk by chunk (:class:`FormScanner`) and answers
the override methods found so far, keeping a few bytes of state whatever the
body's size: ``application/x-www-form-urlencoded`` (and query strings),
``multipart/*``, JSON objects, and any of them behind gzip or deflate. What
counts as an override name is :func:`is_override_name`; the policy that uses
them is :mod:`keygate.gateway.request.overrides`.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Iterable
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

import orjson

from keygate.gateway.errors import BadRequest, TooLarge

_FIELD: Final = b"_method"
# The longest override value read. A longer one is not a method a framework
# would run as such, unless it pads one (Flask's method-override strips the
# value): it is answered as OVERLONG, which no rule allows.
_MAX_VALUE: Final = 64
OVERLONG: Final = "<an override value too long to read>"
# A field name longer than this once leading spaces are gone is not read as
# "_method" by any framework, however it is encoded and bracketed (qs's
# "[_method]", "_method[0]", each byte an escape, a byte-order mark first).
_MAX_NAME: Final = 96
# Bound on decoded bytes scanned from a compressed form body.
MAX_DECODED: Final = 16 * 1024 * 1024
# Leading spaces of a field name, raw ("+", " ", "%20"), as PHP drops them.
_LEADING_SPACES: Final = re.compile(rb"(?i)(?:\+| |%20|\xef\xbb\xbf|%EF%BB%BF)*")
_SEPARATORS: Final = re.compile(rb"[&;]")
_BOM_AND_SPACES: Final = re.compile(rb"^(?:\xef\xbb\xbf| )+")
# What is stripped around a name: ASCII controls and space, quotes, angle
# brackets, and Unicode white space (no-break space, byte-order mark, …).
_NAME_JUNK: Final = (
    "".join(map(chr, range(0x21))) + "\x7f\"'<>\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(map(chr, range(0x2000, 0x200C)))
)
_NAME_MAP: Final = bytes.maketrans(b" .[", b"___")


def method_values(value: str, overlong: bool = False) -> list[str]:
    """The methods one override value names: each of its comma-separated tokens
    (Express takes the first, a repeated header arrives joined by commas).
    ``overlong``: the value ran past what is read, so it is :data:`OVERLONG`."""
    if overlong:
        return [OVERLONG]
    whole = value.strip().upper()
    if "," not in whole:
        return [whole] if whole else []
    return [token for t in whole.split(",") if (token := t.strip())]


def is_override_name(raw: bytes) -> bool:
    """Whether a raw (still percent-encoded) parameter name reads as ``_method``.

    Every reading some framework makes counts: percent-decoded (``+`` a
    space), after leading spaces and a UTF-8 byte-order mark (body parsers
    drop both), with ``.``, ``[`` and spaces read as ``_`` (PHP), and with
    qs's bracket syntax undone (``_method[]``, ``_method[0]`` and
    ``[_method]`` all name ``_method`` to Express and Koa).
    """
    return is_override_text(unquote_to_bytes(raw.replace(b"+", b" ")))


def is_override_text(name: bytes) -> bool:
    """:func:`is_override_name` for a name already decoded.

    Leading and trailing white space of any kind (Unicode's included), control
    characters, quotes and angle brackets go first: Python's email parser,
    which Django reads part headers with, strips them, and Django strips
    field names.
    """
    text = name.decode("utf-8", "surrogateescape").strip(_NAME_JUNK)
    name = _BOM_AND_SPACES.sub(b"", text.encode("utf-8", "surrogateescape"), count=1)
    if name.translate(_NAME_MAP).lower() == _FIELD:
        return True
    if name.startswith(b"["):
        inner = name[1:].partition(b"]")[0]
        return inner.translate(_NAME_MAP).lower() == _FIELD
    base = name.partition(b"[")[0]
    return base.translate(_NAME_MAP).lower() == _FIELD


class FormScanner(Protocol):
    """Takes a body chunk by chunk; answers the override methods found so far."""

    def feed(self, data: bytes) -> list[str]: ...

    def finish(self) -> list[str]: ...



_PARAM: Final = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def boundary_of(params: str) -> bytes | None:
    """The multipart boundary of a Content-Type's parameters (after the media
    type), None when there is none; a 400 when parsers could disagree.

    Frameworks read the same header differently: the first ``boundary`` or
    the last, a ``;boundary=`` inside a quoted value or not, backslash escapes
    or not, RFC 2231 ``boundary*`` forms or not. A body split at a boundary
    keygate did not pick could carry a field it never saw, so every reading
    is taken, and unless they all agree the request is refused.
    """
    readings: set[str] = set()
    params = ";" + params
    found = [(n.lower(), v) for n, v in _PARAM.findall(params)]
    for name, value in found:
        if name.startswith("boundary*"):
            raise BadRequest("The multipart boundary is written ambiguously.")
        if name == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                readings.add(re.sub(r"\\(.)", r"\1", value[1:-1]))  # escapes undone
                readings.add(value[1:-1])  # escapes kept
            else:
                readings.add(value)
    # A naive reading: any "boundary=" at all, whether in a quoted value or not.
    for quoted, bare in re.findall(r'(?i)boundary\s*=\s*(?:"([^"]*)"|([^;\s]*))', params):
        readings.add(quoted or bare)
    # Python's email parser (Django) also drops angle brackets and white space.
    readings |= {r.strip(_NAME_JUNK) for r in readings}
    readings.discard("")
    if not readings:
        return None
    if len(readings) > 1:
        raise BadRequest("The multipart boundary is written ambiguously.")
    boundary = readings.pop()
    if not boundary.isascii() or len(boundary) > 200:
        raise BadRequest("The multipart boundary is not valid.")
    return boundary.encode("ascii")


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
            raw = unquote_to_bytes(self._value.replace(b"+", b" "))
            overlong = self._value_full or len(raw) > _MAX_VALUE
            found = method_values(raw.decode("latin-1"), overlong)
        self._in_name, self._name, self._name_done = True, b"", False
        self._skip, self._value, self._value_full = False, b"", False
        return found


# Where a multipart scanner is: before the first delimiter, on a delimiter
# line, in a part's header block, or in a part's content.
_PREAMBLE, _DELIMITER_LINE, _HEADERS, _CONTENT = range(4)
_MAX_PART_HEAD: Final = 16 * 1024
_HEAD_END: Final = re.compile(rb"(?:^|\n)\r?\n")
_FOLD: Final = re.compile(rb"\r?\n[ \t]+")
# A name parameter wherever it stands: after anything that is not part of a
# word (Python's email parser takes control characters and no-break spaces
# for white space), with anything but "=" and ";" around the "=".
_DISPOSITION_NAME: Final = re.compile(
    rb"""(?i)(?:^|[^a-z0-9_.*-])name(\*?)(?:\*?(\d+)\*?)?[^=;a-z0-9]*=[^;"a-z0-9_%\[.<\r\n]*("(?:[^"\\]|\\.)*"|[^;\r\n]*)"""
)


class Multipart:
    """``multipart/*`` parts, streamed: the content of any part named like ``_method``.

    Lenient on purpose: a delimiter counts wherever it stands (Django takes
    one that no line end precedes), its line may end in LF alone, a close
    delimiter does not end the scan (Django reads parts after ``--B--junk``),
    a header block may end in a bare blank line and fold its lines. Finding
    more parts than a strict parser would only adds checks; finding fewer
    would be a bypass.
    """

    __slots__ = ("_buffer", "_crlf", "_delimiter", "_is_override", "_state", "_value")

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._buffer = b""
        self._crlf = False  # the last delimiter line ended in CRLF
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
                self._content(buffer[:at])
                found += self._end_part()
                # Its line (transport padding, or "--" and whatever follows a
                # close delimiter) is skipped; parts may follow all the same.
                self._state, self._buffer = _DELIMITER_LINE, buffer[at + len(self._delimiter) :]
            elif state == _DELIMITER_LINE:
                # Transport padding up to the line end.
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > _MAX_PART_HEAD:
                        raise BadRequest("A form body delimiter line is too long.")
                    return found
                self._crlf = self._buffer[end - 1 : end] == b"\r"
                self._state, self._buffer = _HEADERS, self._buffer[end + 1 :]
            elif state == _HEADERS:
                match = _HEAD_END.search(self._buffer)
                if match is None:
                    if len(self._buffer) > _MAX_PART_HEAD:
                        raise BadRequest("A form body part's header block is too large.")
                    return found
                head = self._buffer[: match.start()]
                crlf_lines = self._crlf or b"\r\n" in head
                if crlf_lines and match.group() != b"\r\n\r\n"[-len(match.group()) :]:
                    # CRLF lines ended by a bare blank line: Django and
                    # python-multipart read on to the CRLF one, keygate would not.
                    raise BadRequest("A form body part's header block is ambiguous.")
                # Any header line naming the part counts, whatever its name
                # is spelled like (a control character before it, say).
                self._is_override = _disposition_names_override(_FOLD.sub(b" ", head))
                self._value = b""
                self._state, self._buffer = _CONTENT, self._buffer[match.end() :]

    def finish(self) -> list[str]:
        if self._state == _CONTENT:
            buffer, self._buffer = self._buffer, b""
            at = buffer.find(self._delimiter)  # a last delimiter with nothing after it
            self._content(buffer if at < 0 else buffer[:at])
            return self._end_part()
        return []

    def _content(self, data: bytes) -> None:
        if self._state == _CONTENT and self._is_override and len(self._value) <= _MAX_VALUE + 2:
            self._value = (self._value + data)[: _MAX_VALUE + 3]

    def _end_part(self) -> list[str]:
        found: list[str] = []
        if self._state == _CONTENT and self._is_override:
            value = self._value
            # The line end before the next delimiter is not the value's.
            overlong = len(value.removesuffix(b"\r\n").removesuffix(b"\n")) > _MAX_VALUE
            found = method_values(value.decode("latin-1"), overlong)
        self._is_override, self._value = False, b""
        return found


def _disposition_names_override(line: bytes) -> bool:
    """Whether a Content-Disposition line names its part like ``_method``.

    Plain ``name`` values (quoted, escapes undone), RFC 2231/8187 ``name*``
    values in their charset, and ``name*0``, ``name*1``… continuations
    joined in order (Django reads all three). A value in a charset Python
    does not know, or that does not decode, counts as an override: the part
    is checked, never skipped.
    """
    pieces: dict[int, bytes] = {}
    extended = False
    for star, index, raw in _DISPOSITION_NAME.findall(line):
        value = raw
        if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
        if not star and not index:
            if is_override_name(value.replace(b"+", b"%2B")) or is_override_name(value):
                return True
            continue
        extended = True
        pieces[int(index or b"0")] = value
    if not extended:
        return False
    joined = b"".join(pieces[i] for i in sorted(pieces))
    charset, _, rest = joined.partition(b"'")
    if rest:
        _, _, encoded = rest.partition(b"'")
    else:
        charset, encoded = b"", joined
    try:
        text = unquote_to_bytes(encoded).decode(charset.decode("ascii") or "utf-8")
    except (LookupError, UnicodeError):
        return True
    return is_override_text(text.encode("utf-8", "surrogatepass"))


# Where a JSON scanner is, at the top level of an object.
(_START, _KEY_OR_END, _KEY, _COLON, _VALUE, _STRING, _NESTED, _NESTED_STRING, _NEXT, _DONE) = (
    range(10)
)
_SPACE: Final = re.compile(rb"[ \t\r\n]*")
_BOM: Final = b"\xef\xbb\xbf"
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
                if state == _START and buffer[pos : pos + 1] == b"\xef":
                    # A byte-order mark, which JSON body parsers skip.
                    if len(buffer) - pos < 3:
                        return pos  # the rest of it comes in the next chunk
                    if buffer.startswith(_BOM, pos):
                        pos += 3
                        continue
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
                        if self._is_override:
                            # An array or object: Express takes its first item,
                            # lodash lower-cases ["DELETE"] to "delete". No rule
                            # allows it: the check refuses.
                            found.append(OVERLONG)
                        self._state, self._depth = _NESTED, 1
                    else:
                        scalar_end = _SCALAR_END.search(buffer, pos)
                        if scalar_end is None:
                            return pos - 1  # the scalar may go on in the next chunk
                        if self._is_override:
                            found.append(OVERLONG)  # a number or literal: not a method
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
                        text = _json_string(self._raw)
                        found += method_values(text, len(self._raw) >= _MAX_VALUE * 6)
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
    return is_override_text(_json_string(raw).encode("utf-8", "surrogatepass"))


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
        output back: it is drained here, never by an unbounded ``flush``).

        A gzip body may hold several members one after another (RFC 1952
        §2.2); Express and Koa inflate them all, so each is inflated in turn.
        """
        step = 1 << 16
        while True:
            inflater = self._inflater
            if inflater.eof:
                data = inflater.unused_data + data
                if not data:
                    return
                self._inflater = inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
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
            if inflater.eof:
                data = b""  # the next member, if any, is in unused_data
                if not inflater.unused_data:
                    return
                continue
            if not data and len(out) < step:
                return


class Recoded:
    """A form scanner behind a charset decoder: some frameworks decode a body by
    its Content-Type charset before reading fields (Django does), so a UTF-16
    ``_method`` is one to them. The scan reads the text as UTF-8."""

    __slots__ = ("_decoder", "_inner")

    def __init__(self, inner: FormScanner, charset: str) -> None:
        self._inner = inner
        self._decoder = codecs.getincrementaldecoder(charset)("replace")

    def feed(self, data: bytes) -> list[str]:
        return self._inner.feed(self._decode(data, final=False))

    def finish(self) -> list[str]:
        tail = self._decode(b"", final=True)
        return (self._inner.feed(tail) if tail else []) + self._inner.finish()

    def _decode(self, data: bytes, *, final: bool) -> bytes:
        try:
            text = self._decoder.decode(data, final=final)
        except UnicodeError as exc:  # UTF-16 or -32 without a byte-order mark
            raise BadRequest("The request body does not decode in its charset.") from exc
        return text.encode("utf-8", "surrogatepass")


class Each:
    """Several scanners over the same body: every override any of them finds."""

    __slots__ = ("_scanners",)

    def __init__(self, *scanners: FormScanner) -> None:
        self._scanners = scanners

    def feed(self, data: bytes) -> list[str]:
        return [method for scanner in self._scanners for method in scanner.feed(data)]

    def finish(self) -> list[str]:
        return [method for scanner in self._scanners for method in scanner.finish()]
