"""The form reader on its own: every malformed or hostile body raises an OpticError with its own reason."""

from __future__ import annotations

import pytest

from service.errors import OpticError
from service.http.forms import FileField, Form, param_field, text_field
from service.http.multipart import FormLimits, FormReader
from service.tasks.classification import ClassificationParams

LIMITS = FormLimits(max_parts=8, max_field_bytes=64, max_filename_length=40)
CT = "multipart/form-data; boundary=XyZ"


def body(*parts: bytes, close: bool = True) -> bytes:
    out = b"".join(b"--XyZ\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--XyZ--\r\n" if close else b"")


def file_part(name: str = "images", filename: str = "a.png", data: bytes = b"\x89PNG data") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode() + (
        b"Content-Type: image/png\r\n\r\n" + data
    )


def text_part(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def read(data: bytes, content_type: str = CT, chunk: int = 0, limits: FormLimits = LIMITS) -> list:
    """chunk 0: the body whole (the fast path where it is well framed); else in pieces (python-multipart)."""
    reader = FormReader(content_type, limits)
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step], final=start + step >= len(data))
    return reader.finish()


def refused(reason: str, status: int, words: str, data: bytes, content_type: str = CT, **kw: object) -> None:
    with pytest.raises(OpticError) as info:
        read(data, content_type, **kw)  # type: ignore[arg-type]
    assert (info.value.reason, info.value.status_code) == (reason, status), info.value.message
    assert words in info.value.message


@pytest.mark.parametrize("chunk", [0, 1, 7, 100])
def test_parts_survive_any_chunking(chunk: int) -> None:
    image = bytes(range(256)) * 40 + b"\r\n--XyZ-not-a-boundary\r\n"
    parts = read(body(text_part("model", b"digits:1"), file_part(data=image)), chunk=chunk)
    assert [(p.name, p.filename, p.is_file) for p in parts] == [("model", None, False), ("images", "a.png", True)]
    assert parts[0].text() == "digits:1" and parts[1].data == image


CASES = {
    "no_content_type": ("unsupported_media_type", 415, "no Content-Type", body(file_part()), ""),
    "json": ("unsupported_media_type", 415, "application/json", b'{"images": []}', "application/json"),
    "missing_boundary": ("malformed_request", 400, "no boundary", body(file_part()), "multipart/form-data"),
    "odd_boundary": ("malformed_request", 400, "RFC 2046", body(file_part()), "multipart/form-data; boundary=a\x01b"),
    "unterminated": ("malformed_request", 400, "closing boundary", body(file_part(), close=False), CT),
    "empty_body": ("malformed_request", 400, "closing boundary", b"", CT),
    "garbage": ("malformed_request", 400, "malformed", b"this is not multipart at all\r\n", CT),
    "no_disposition": ("malformed_request", 400, "Content-Disposition", body(b"X-Other: 1\r\n\r\nxx"), CT),
    "not_form_data": ("malformed_request", 400, "form-data",
                      body(b'Content-Disposition: attachment; name="a"\r\n\r\nx'), CT),
    "no_name": ("malformed_request", 400, "form-data", body(b"Content-Disposition: form-data\r\n\r\nx"), CT),
    "huge_header": ("malformed_request", 400, "header",
                    body(b"Content-Disposition: form-data; name=\"a\"\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\nx"), CT),
    "too_many_parts": ("too_many_parts", 413, "OPTIC_MAX_FORM_PARTS", body(*[text_part("x", b"1")] * 9), CT),
    "field_too_large": ("field_too_large", 413, "OPTIC_MAX_FIELD_BYTES", body(text_part("model", b"m" * 65)), CT),
    "long_filename": ("invalid_filename", 400, "OPTIC_MAX_FILENAME_LENGTH", body(file_part(filename="f" * 41)), CT),
    "path_filename": ("invalid_filename", 400, "path separator", body(file_part(filename="../../etc/passwd")), CT),
    "control_filename": ("invalid_filename", 400, "control character", body(file_part(filename="a\x07.png")), CT),
    "non_utf8_filename": ("invalid_filename", 400, "UTF-8",
                          body(b'Content-Disposition: form-data; name="images"; filename="\xff\xfe.png"\r\n\r\nx'), CT),
}  # fmt: skip


@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_body_is_refused_with_its_reason(case: str, chunk: int) -> None:
    reason, status, words, data, content_type = CASES[case]
    refused(reason, status, words, data, content_type, chunk=chunk)


def test_a_preamble_is_refused_either_way() -> None:
    data = b"preamble text\r\n" + body(text_part("model", b"m"), file_part())
    for chunk in (0, 3):
        refused("malformed_request", 400, "malformed multipart", data, chunk=chunk)


@pytest.mark.parametrize("data", [
    body(text_part("model", b"m")).replace(b"\r\n\r\nm", b"\r\nX-Extra:  spaced \r\n\r\nm"),
    body(file_part()) + b"epilogue, ignored",
])  # fmt: skip
def test_the_fast_path_and_python_multipart_agree(data: bytes) -> None:
    whole, pieces = read(data), read(data, chunk=3)
    assert [(p.name, p.filename, p.data) for p in whole] == [(p.name, p.filename, p.data) for p in pieces]


def test_urlencoded_text_fields_are_read_with_the_same_limits() -> None:
    parts = read(b"model=digits%3A1&top_k=3", "application/x-www-form-urlencoded")
    assert [(p.name, p.text()) for p in parts] == [("model", "digits:1"), ("top_k", "3")]
    refused("field_too_large", 413, "OPTIC_MAX_FIELD_BYTES", b"model=" + b"m" * 65, "application/x-www-form-urlencoded")
    refused("too_many_parts", 413, "OPTIC_MAX_FORM_PARTS", b"&".join([b"a=1"] * 9), "application/x-www-form-urlencoded")


FIELDS = ((FileField("images", "images"),), (text_field("model", "m"), param_field(ClassificationParams, "top_k", "k")))


def form(data: bytes) -> Form:
    return Form(read(data), *FIELDS)


def test_form_converts_and_bounds_values_by_the_params_model() -> None:
    parsed = form(body(text_part("top_k", b" 3 "), file_part(), text_part("ignored", b"x")))
    assert parsed.values == {"top_k": 3}
    assert [f.display_name for f in parsed.files("images")] == ["images[0] (a.png)"]
    for value, words in ((b"0", "between 1.0 and 1000.0"), (b"abc", "must be an integer"), (b"1e400", "integer")):
        with pytest.raises(OpticError, match="top_k") as info:
            form(body(text_part("top_k", value), file_part()))
        assert info.value.reason == "invalid_parameter" and words in info.value.message


def test_a_text_value_where_a_file_belongs_is_refused_not_fetched() -> None:
    with pytest.raises(OpticError) as info:
        form(body(text_part("images", b"http://169.254.169.254/latest/meta-data/")))
    assert info.value.reason == "expected_file" and "never fetched" in info.value.message
    with pytest.raises(OpticError) as info:
        form(body(file_part(name="model")))
    assert info.value.reason == "expected_text"
    with pytest.raises(OpticError) as info:
        form(body(text_part("top_k", b"1"), text_part("top_k", b"2"), file_part()))
    assert info.value.reason == "invalid_parameter" and "2 times" in info.value.message


def test_a_file_without_a_name_but_with_a_type_is_still_a_file() -> None:
    part = b'Content-Disposition: form-data; name="images"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8'
    assert form(body(part)).files("images")[0].data == b"\xff\xd8"
