"""``multipart/form-data`` bodies (RFC 7578 on RFC 2046's multipart), sans-I/O.

:func:`form_boundary` reads the boundary from a request's Content-Type and
:func:`parse_form` splits a whole body, already read and bounded in size by
the caller, into its :class:`FormPart` s.  The body is scanned by
``bytes.find`` and regular expressions, never by a Python loop over its
bytes or over the boundary's lookalikes in it: a file part of many
megabytes costs one search and one copy.

What is accepted, beyond the strict grammar: a preamble before the first
boundary and an epilogue after the last; spaces or tabs after a boundary
(RFC 2046's transport padding); header names in any case, folded header
lines; ``Content-Disposition`` parameters as quoted strings (with backslash
escapes) or bare tokens.  ``filename*`` (RFC 5987, which RFC 7578 tells
senders not to use) is taken when its charset is UTF-8 and ignored
otherwise.  Names and file names are given as sent: the percent escapes that
browsers and httpx write for ``"`` and line breaks (``%22``, ``%0D``,
``%0A``) are not decoded.  Lines end in CRLF, as RFC 2046 requires; a line
that continues after ``--boundary`` with anything but ``--`` or padding is
content, not a boundary.

Every refusal is a :class:`MultipartError` whose message is one line.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import attrs

__all__ = ["FormPart", "MultipartError", "form_boundary", "parse_form"]

_CRLF = b"\r\n"
_MAX_BOUNDARY = 70
#: RFC 2046's bchars: what a boundary is made of (it must not end in a space)
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
#: one ``; name=value`` parameter, the value a quoted string or a token
_PARAMETER = re.compile(r'\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*?))\s*(?:;|$)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


class MultipartError(ValueError):
    """A body or Content-Type that is not ``multipart/form-data`` as RFC 7578
    has it; the message is one line saying what is wrong."""


@attrs.frozen
class FormPart:
    """One field of a form: its name, its bytes, and for a file its file
    name and media type as the client sent them (None when not sent)."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def _short(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _parameters(value: str) -> tuple[str, dict[str, str]]:
    """A header value's leading word (lowercased) and its parameters (names
    lowercased; a name given twice keeps its first value).  Segments that
    are no ``name=value`` are skipped."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAMETER.match(rest, pos)
        if match is None:
            stop = rest.find(";", pos)
            pos = len(rest) if stop < 0 else stop + 1
            continue
        name, quoted, token = match.groups()
        params.setdefault(name.lower(), _ESCAPE.sub(r"\1", quoted) if quoted is not None else token)
        pos = match.end()
    return head.strip().lower(), params


def form_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header value.

    Raises :class:`MultipartError` when the media type is another one, or the
    boundary parameter is missing or not 1 to 70 of RFC 2046's characters.
    """
    kind, params = _parameters(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"Content-Type is {_short(kind or content_type)}, not multipart/form-data")
    boundary = params.get("boundary")
    if boundary is None:
        raise MultipartError("Content-Type multipart/form-data has no boundary parameter")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise MultipartError(
            f"multipart boundary {_short(boundary)} is not 1 to {_MAX_BOUNDARY} characters of RFC 2046"
            " (letters, digits, space and '()+_,-./:=?, not ending in a space)"
        )
    return boundary.encode("ascii")


def _delimiters(boundary: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Patterns of a delimiter line at the start of the body and after a
    CRLF: ``--boundary``, then ``--`` (group 1: the closing one) or padding
    and CRLF.  A line that goes on with other bytes is no delimiter."""
    tail = rb"(--)?(?(1)|[ \t]*\r\n)"
    return re.compile(re.escape(b"--" + boundary) + tail), re.compile(re.escape(b"\r\n--" + boundary) + tail)


def _line_end(found: re.Match[bytes]) -> int:
    """Where a delimiter line ends: the index after its CRLF, or -1 for the closing one."""
    return -1 if found.group(1) else found.end()


def _header_lines(block: bytes) -> list[str]:
    """A part's header lines, folded lines joined; UTF-8, else Latin-1."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")
    lines: list[str] = []
    for line in text.split("\r\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        elif line:
            lines.append(line)
    return lines


def _part(number: int, block: bytes, data: bytes) -> FormPart:
    """Part ``number`` (from 1) from its header block and its data."""
    headers: dict[str, str] = {}
    for line in _header_lines(block):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"multipart part {number} has a malformed header line {_short(line)}")
        headers.setdefault(name.strip().lower(), value.strip())
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise MultipartError(f"multipart part {number} has no Content-Disposition header")
    kind, params = _parameters(disposition)
    if kind != "form-data" or "name" not in params:
        raise MultipartError(f"multipart part {number} is not Content-Disposition form-data with a name")
    filename = params.get("filename")
    extended = params.get("filename*", "")
    charset, _, encoded = extended.partition("'")
    if charset.lower() == "utf-8" and "'" in encoded:
        try:
            filename = unquote(encoded.partition("'")[2], errors="strict")
        except UnicodeDecodeError:
            pass  # then the plain filename, if any
    return FormPart(params["name"], data, filename, headers.get("content-type"))


def parse_form(
    body: bytes, boundary: bytes, *, max_parts: int = 32, max_part_header_bytes: int = 8192
) -> list[FormPart]:
    """The parts of a whole ``multipart/form-data`` body, in order.

    ``boundary`` is :func:`form_boundary`'s.  A body may hold at most
    ``max_parts`` parts, each with at most ``max_part_header_bytes`` of
    headers.  Raises :class:`MultipartError` when there is no opening
    boundary, the body ends before the closing ``--boundary--``, a part is
    no ``Content-Disposition: form-data`` with a ``name``, or a limit is
    passed.
    """
    if not 1 <= len(boundary) <= _MAX_BOUNDARY:
        raise MultipartError(f"multipart boundary must be 1 to {_MAX_BOUNDARY} bytes, got {len(boundary)}")
    first, after_crlf = _delimiters(boundary)
    found = first.match(body) or after_crlf.search(body)
    if found is None:
        raise MultipartError(f"multipart body has no opening boundary --{_shown(boundary)}")
    line_end = _line_end(found)
    parts: list[FormPart] = []
    while line_end >= 0:
        if len(parts) == max_parts:
            raise MultipartError(f"multipart body has more than {max_parts} parts")
        start = line_end
        block_end = _headers_end(body, start, max_part_header_bytes, len(parts) + 1)
        data_start = block_end + 2
        found = after_crlf.search(body, data_start)
        if found is None:
            raise MultipartError(f"multipart body is truncated (no closing --{_shown(boundary)}--)")
        parts.append(_part(len(parts) + 1, body[start:block_end], body[data_start : found.start()]))
        line_end = _line_end(found)
    return parts


def _headers_end(body: bytes, start: int, limit: int, number: int) -> int:
    """Where the header lines of part ``number``, starting at ``start``, end
    (the index of the blank line's CRLF)."""
    if body.startswith(_CRLF, start):  # a part without headers
        return start
    end = body.find(b"\r\n\r\n", start, start + limit + 4)
    if end >= 0:
        return end + 2
    if len(body) - start > limit:
        raise MultipartError(f"multipart part {number} has more than {limit} bytes of headers")
    raise MultipartError("multipart body is truncated in a part's headers")


def _shown(boundary: bytes) -> str:
    return boundary.decode("ascii", "replace")
