"""An nginx ``map`` of static keys (pure)::

    map $http_x_api_key $api_client {
        default "";          # ignored
        "k3y-of-client-one" client-one;
        k3y-of-client-two   client-two;
    }

Each entry ``source value;`` is one key and its name. Comments (``#`` to the
end of the line), single and double quotes with backslash escapes, and a
file of entries alone (the file a ``map`` block includes) are read as nginx
reads them; the ``default``, ``hostnames`` and ``volatile`` lines are
ignored. A regular expression (``~…``) or an ``include`` is named, not
followed; a block left open is a truncated file.
"""

from __future__ import annotations

from keygate.gateway.service.imports.entries import Entry, Read, decode

IGNORED = ("default", "hostnames", "volatile")


def _tokens(text: str, out: Read) -> list[tuple[str, int, bool]] | None:
    """(word, line, quoted) for each word, ``;``, ``{`` and ``}``."""
    words: list[tuple[str, int, bool]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            words.append((c, line, False))
            i += 1
        elif c in "\"'":
            start, i, chars = line, i + 1, []
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] == "\n":
                    line += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                out.problem(start, "a quote is not closed (truncated?)")
                return None
            words.append(("".join(chars), start, True))
            i += 1
        else:
            start = i
            while i < n and text[i] not in " \t\r\n;{}#\"'":
                i += 1
            words.append((text[start:i], line, False))
    return words


def read(data: bytes) -> Read:
    out = Read()
    text = decode(data, out)
    if text is None:
        return out
    words = _tokens(text, out)
    if words is None:
        return out
    in_map = not any(w == "map" and not q for w, _, q in words)
    depth_line = 0
    i = 0
    while i < len(words):
        word, line, quoted = words[i]
        if not quoted and word == "map" and not in_map:
            # map $source $result {
            if i + 3 >= len(words) or words[i + 3][0] != "{":
                out.problem(line, "a map must read: map $variable $name {")
                return out
            in_map, depth_line = True, line
            i += 4
            continue
        if not quoted and word == "}":
            in_map, depth_line = False, 0
            i += 1
            continue
        # One statement up to its ';'.
        end = i
        while end < len(words) and not (words[end][0] in ";{}" and not words[end][2]):
            end += 1
        statement = words[i:end]
        closed = end < len(words) and words[end][0] == ";"
        i = end + 1 if closed else end
        if not in_map:
            continue  # outside any map: other configuration
        if not closed:
            out.problem(line, "an entry does not end with ';' (truncated?)")
            continue
        _entry(statement, line, out)
    if depth_line:
        out.problem(depth_line, "the map block is not closed (truncated?)")
    return out


def _entry(statement: list[tuple[str, int, bool]], line: int, out: Read) -> None:
    source, _, quoted = statement[0]
    if not quoted and source in IGNORED:
        return
    if not quoted and source == "include":
        out.problem(line, "include is not followed: import the included file itself")
        return
    if len(statement) != 2:
        out.problem(line, "an entry must be: key name;")
        return
    if source.startswith("~"):
        out.problem(line, "a regular expression, not a key")
        return
    if not quoted and source.startswith("\\"):
        source = source[1:]  # nginx's escape for a key that starts like a keyword
    value = statement[1][0]
    out.entries.append(Entry(line, source, name=value or None))
