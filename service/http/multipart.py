"""Read an HTTP form body without trusting it: multipart/form-data (and urlencoded text fields).

The byte-level work is python-multipart's streaming `MultipartParser`, except for the common case of a body
fed whole and framed exactly as clients write it: that one is split with `bytes.find` (a tenth of the
cost); anything irregular goes to python-multipart, which then has the last word. Everything either hands
over is checked here against limits before it is kept: parts per body, header bytes per part, bytes per
text field, file name length and characters. Parts are held in memory (the body is already bounded by the
route's limit), except file fields the caller asks to spool: their bytes are handed back by
`take_spooled()` after each `feed()`, so the caller can write them to disk off the event loop. Every
problem raises an `OpticError` naming it, with its own reason; nothing in here answers 5xx.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import (
    FieldTooLarge,
    InvalidFilename,
    InvalidParameter,
    MalformedRequest,
    OpticError,
    TooManyParts,
    UnsupportedMediaType,
)

MAX_PART_HEADER_BYTES = 16 * 1024  # a browser's part header is a few hundred bytes
_BOUNDARY = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")  # RFC 2046 bchars
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ODD = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True)
class FormLimits:
    max_parts: int
    max_field_bytes: int
    max_filename_length: int


@dataclass
class Part:
    name: str
    filename: str | None  # None: a text field
    content_type: str
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    spooled: bool = False
    path: Path | None = None  # where a spooled part was written (by the caller)

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    @property
    def data(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameter(f"{self.name}: the value is not valid UTF-8") from None


def _decode_header(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"a multipart part's {what} is not valid UTF-8") from None


def check_filename(raw: bytes, limit: int) -> str:
    """A file name names a file: printable UTF-8, no path, at most `limit` bytes."""
    if len(raw) > limit:
        raise InvalidFilename(
            f"an uploaded file name is {len(raw)} bytes long; the limit is {limit} (OPTIC_MAX_FILENAME_LENGTH)"
        )
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFilename("an uploaded file name is not valid UTF-8") from None
    if _ODD.search(name):
        raise InvalidFilename(
            f"the uploaded file name {name!r} holds a control character or a path separator: send the file's "
            "own name, without folders"
        )
    return name


class FormReader:
    """Feed the body as it arrives, then `finish()`; `spool(field_name)` says which file fields to hand back."""

    def __init__(
        self,
        content_type: str,
        limits: FormLimits,
        spool: Callable[[str], bool] | None = None,
    ) -> None:
        media_type, options = parse_options_header(content_type)
        self.limits = limits
        self.parts: list[Part] = []
        self._spool = spool or (lambda name: False)
        self._spooling = spool is not None
        self._fed = False
        self._urlencoded = media_type == b"application/x-www-form-urlencoded"
        self._raw = bytearray()
        if self._urlencoded:
            return
        if media_type != b"multipart/form-data":
            shown = media_type.decode("latin-1") or "no Content-Type"
            raise UnsupportedMediaType(
                f"expected a multipart/form-data body (files in form fields), got {shown}"
            )
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedRequest("the multipart/form-data Content-Type names no boundary")
        if not _BOUNDARY.match(boundary):
            raise MalformedRequest("the multipart boundary is not 1-70 characters of those RFC 2046 allows")
        self._boundary = boundary
        self._current: Part | None = None
        self._headers: list[list[bytes]] = []
        self._field, self._value = b"", b""
        self._header_bytes = 0
        self._ended = False
        self._error: OpticError | None = None
        self._parser: MultipartParser | None = None

    def _streaming_parser(self) -> MultipartParser:
        if self._parser is None:
            self._parser = self._make_parser()
        return self._parser

    def _make_parser(self) -> MultipartParser:
        return MultipartParser(
            self._boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_end": self._on_end,
            },
        )

    # -- python-multipart callbacks: errors are kept and raised from feed(), outside the parser -----------
    def _fail(self, error: OpticError) -> NoReturn:
        if self._error is None:
            self._error = error
        raise error

    def _on_part_begin(self) -> None:
        if len(self.parts) >= self.limits.max_parts:
            self._fail(
                TooManyParts(
                    f"the form has more than {self.limits.max_parts} parts (OPTIC_MAX_FORM_PARTS)"
                )
            )
        self._headers = []
        self._field, self._value = b"", b""
        self._header_bytes = 0
        self._current = None

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            self._fail(MalformedRequest(f"a multipart part's headers exceed {MAX_PART_HEADER_BYTES} bytes"))

    # A header's name and value may each arrive in pieces (any chunk boundary); on_header_end closes it.
    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append([self._field, self._value])
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        try:
            part = self._make_part({name.strip().lower(): value.strip() for name, value in self._headers})
        except OpticError as exc:
            self._fail(exc)
        self._current = part
        self.parts.append(part)

    def _make_part(self, headers: dict[bytes, bytes]) -> Part:
        """A part from its headers (names lower-cased): form-data with a name, and a sound file name if any."""
        disposition = headers.get(b"content-disposition")
        if disposition is None:
            raise MalformedRequest("a multipart part has no Content-Disposition header")
        kind, options = parse_options_header(disposition)
        raw_name = options.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise MalformedRequest('a multipart part is not `Content-Disposition: form-data; name="..."`')
        name = _decode_header(raw_name, "field name")
        if len(raw_name) > 256 or _CONTROL.search(name):
            raise MalformedRequest("a multipart field name is over-long or holds control characters")
        raw_filename = options.get(b"filename")
        filename = None if raw_filename is None else check_filename(raw_filename, self.limits.max_filename_length)
        content_type = headers.get(b"content-type", b"text/plain" if filename is None else b"").decode("latin-1")
        part = Part(name, filename, content_type)
        part.spooled = part.is_file and self._spool(name)
        return part

    def _split_whole(self, body: bytes) -> list[Part] | None:
        """The fast path: a whole body, framed as clients write it (no preamble, CRLF everywhere, `Name: value`
        header lines). None for anything else, which python-multipart then reads."""
        delimiter = b"--" + self._boundary
        separator = b"\r\n" + delimiter
        if not body.startswith(delimiter):
            return None
        parts: list[Part] = []
        pos = len(delimiter)
        while not body.startswith(b"--", pos):
            if not body.startswith(b"\r\n", pos):
                return None
            head = pos + 2
            head_end = body.find(b"\r\n\r\n", head, head + MAX_PART_HEADER_BYTES + 4)
            data_end = body.find(separator, head_end + 4) if head_end >= 0 else -1
            if data_end < 0:
                return None
            headers = {}
            for line in body[head:head_end].split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or not name or name != name.strip():
                    return None
                headers[name.lower()] = value.strip()
            if len(parts) >= self.limits.max_parts:
                raise TooManyParts(f"the form has more than {self.limits.max_parts} parts (OPTIC_MAX_FORM_PARTS)")
            part = self._make_part(headers)
            part.size = data_end - head_end - 4
            if not part.is_file and part.size > self.limits.max_field_bytes:
                raise FieldTooLarge(
                    f"form field {part.name!r} is over {self.limits.max_field_bytes} bytes (OPTIC_MAX_FIELD_BYTES)"
                )
            part.chunks.append(body[head_end + 4 : data_end])
            parts.append(part)
            pos = data_end + len(separator)
        return parts

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:  # data before the first part's headers: python-multipart never calls this then
            self._fail(MalformedRequest("multipart data outside any part"))
        assert part is not None
        part.size += end - start
        if not part.is_file and part.size > self.limits.max_field_bytes:
            self._fail(
                FieldTooLarge(
                    f"form field {part.name!r} is over {self.limits.max_field_bytes} bytes (OPTIC_MAX_FIELD_BYTES)"
                )
            )
        part.chunks.append(data[start:end])

    def _on_end(self) -> None:
        self._ended = True

    # -- the caller's side -----------------------------------------------------------------------------
    def feed(self, data: bytes, final: bool = False) -> None:
        """`final`: this is the last of the body (then a body fed whole may take the fast path)."""
        first, self._fed = not self._fed, True
        if not data:
            return
        if self._urlencoded:
            self._raw += data
            return
        if self._error is not None:
            raise self._error
        if first and final and not self._spooling:
            parts = self._split_whole(data)
            if parts is not None:
                self.parts, self._ended = parts, True
                return
        try:
            self._streaming_parser().write(data)
        except OpticError:
            raise
        except Exception as exc:  # python-multipart's ParseError, and anything else it may raise on junk
            raise MalformedRequest(f"malformed multipart body: {exc}") from None
        if self._error is not None:  # a callback failed, and the parser swallowed it
            raise self._error

    def take_spooled(self) -> list[tuple[Part, bytes]]:
        """Bytes of spooled file parts received since the last call, to be written by the caller."""
        taken = []
        for part in self.parts:
            if part.spooled and part.chunks:
                taken.append((part, b"".join(part.chunks)))
                part.chunks.clear()
        return taken

    def finish(self) -> list[Part]:
        if self._urlencoded:
            return self._finish_urlencoded()
        if self._error is not None:
            raise self._error
        if not self._ended:
            raise MalformedRequest("the multipart body ends before its closing boundary (--BOUNDARY--)")
        return self.parts

    def _finish_urlencoded(self) -> list[Part]:
        try:
            text = self._raw.decode("ascii")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                              max_num_fields=self.limits.max_parts)
        except UnicodeDecodeError:
            raise MalformedRequest("an urlencoded form body holds bytes outside ASCII") from None
        except ValueError as exc:
            if "max_num_fields" in str(exc) or "Max number" in str(exc):
                raise TooManyParts(
                    f"the form has more than {self.limits.max_parts} fields (OPTIC_MAX_FORM_PARTS)"
                ) from None
            raise MalformedRequest(f"malformed urlencoded form: {exc}") from None
        parts = []
        for name, value in pairs:
            data = value.encode()
            if len(data) > self.limits.max_field_bytes:
                raise FieldTooLarge(
                    f"form field {name!r} is over {self.limits.max_field_bytes} bytes (OPTIC_MAX_FIELD_BYTES)"
                )
            parts.append(Part(name, None, "text/plain", [data], len(data)))
        return parts
