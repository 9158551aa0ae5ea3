"""multipart/form-data parsing (trio_asr.protocol.multipart): bodies written
by hand, by the standard library's email package and by httpx (the encoder
of the openai client) parse back to their fields; content that looks like a
boundary stays content; every malformed body is one line of MultipartError."""

from __future__ import annotations

import email.message
import email.policy
import os
import re
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trio_asr.protocol.multipart import FormPart, MultipartError, form_boundary, parse_form

BOUNDARY = b"----trio-asr-0123456789"


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(parts: list[FormPart], boundary: bytes = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart/form-data body, written as RFC 7578 has it (quoted
    parameters with backslash escapes)."""
    out = [preamble]
    for part in parts:
        disposition = f"form-data; name={quote(part.name)}"
        if part.filename is not None:
            disposition += f"; filename={quote(part.filename)}"
        headers = f"Content-Disposition: {disposition}\r\n"
        if part.content_type is not None:
            headers += f"Content-Type: {part.content_type}\r\n"
        out += [b"--", boundary, b"\r\n", headers.encode(), b"\r\n", part.data, b"\r\n"]
    out += [b"--", boundary, b"--\r\n", epilogue]
    return b"".join(out)


def refusal(body: bytes, boundary: bytes = BOUNDARY, **limits: int) -> str:
    with pytest.raises(MultipartError) as info:
        parse_form(body, boundary, **limits)
    message = str(info.value)
    assert "\n" not in message, message
    return message


PARTS = [
    FormPart("model", b"whisper-1"),
    FormPart("timestamp_granularities[]", b"word"),
    FormPart("timestamp_granularities[]", b"segment"),
    FormPart("file", b"RIFF\x00\xff\r\n\r\n--", "talk.wav", "audio/wav"),
    FormPart("empty", b""),
]


def test_a_body_parses_back_to_its_parts():
    assert parse_form(encode(PARTS), BOUNDARY) == PARTS
    assert parse_form(encode([]), BOUNDARY) == []


def test_preamble_epilogue_and_transport_padding_are_skipped():
    body = encode(PARTS, preamble=b"This is a preamble.\r\n--not-it\r\n", epilogue=b"epilogue\r\n--" + BOUNDARY)
    assert parse_form(body, BOUNDARY) == PARTS
    padded = body.replace(b"--" + BOUNDARY + b"\r\n", b"--" + BOUNDARY + b" \t \r\n")
    assert padded != body and parse_form(padded, BOUNDARY) == PARTS


def test_content_that_looks_like_a_boundary_stays_content():
    tricky = [
        b"--" + BOUNDARY,  # no CRLF before it
        b"\r\n--" + BOUNDARY[:-1],  # a prefix of the boundary
        b"\r\n--" + BOUNDARY + b"x\r\n",  # the line goes on: another boundary
        b"\r\n--" + BOUNDARY + b" x\r\n",  # padding, then more than CRLF
        b"\r\n\r\n\r",
        b"\r\n-",
        os.urandom(3000).replace(b"\r\n--", b"\r\n-+"),
    ]
    parts = [FormPart(f"p{i}", data) for i, data in enumerate(tricky)]
    parts.append(FormPart("cr", b"ends in CR\r"))
    assert parse_form(encode(parts), BOUNDARY) == parts


def test_parameters_quoted_escaped_or_tokens_and_headers_in_any_case():
    body = (
        b"--B\r\n"
        b'content-disposition: FORM-DATA; NAME=model ; filename="C:\\\\dir\\\\a \\"b\\";c.wav"\r\n'
        b"CONTENT-TYPE: audio/x-wav\r\n"
        b"\r\nx\r\n"
        b"--B\r\n"
        b"Content-Disposition: form-data;\r\n name=folded;\r\n"
        b"\tfilename*=UTF-8''%E2%82%AC%20price.wav; filename=euro.wav\r\n"
        b"\r\ny\r\n"
        b"--B\r\n"
        b"Content-Disposition: form-data; name=\"caf\xc3\xa9\"; filename*=latin-1''caf%E9; bogus; =\r\n"
        b"\r\nz\r\n"
        b"--B--"
    )
    assert parse_form(body, b"B") == [
        FormPart("model", b"x", 'C:\\dir\\a "b";c.wav', "audio/x-wav"),
        FormPart("folded", b"y", "\N{EURO SIGN} price.wav"),
        FormPart("caf\N{LATIN SMALL LETTER E WITH ACUTE}", b"z"),
    ]


def test_httpx_bodies_parse_back():
    """httpx writes the openai client's requests: the same fields come back."""
    httpx = pytest.importorskip("httpx")
    audio = os.urandom(10_000) + b"\r\n--"
    request = httpx.Request(
        "POST",
        "http://localhost/v1/audio/transcriptions",
        files={"file": ("r\N{LATIN SMALL LETTER E WITH ACUTE}union.flac", audio, "audio/flac")},
        data={"model": "whisper-1", "timestamp_granularities[]": ["word", "segment"], "temperature": "0"},
    )
    boundary = form_boundary(request.headers["content-type"])
    assert parse_form(request.read(), boundary) == [
        FormPart("model", b"whisper-1"),
        FormPart("timestamp_granularities[]", b"word"),
        FormPart("timestamp_granularities[]", b"segment"),
        FormPart("temperature", b"0"),
        FormPart("file", audio, "r\N{LATIN SMALL LETTER E WITH ACUTE}union.flac", "audio/flac"),
    ]
    # httpx (like browsers) writes '"' as %22: names come back as sent
    request = httpx.Request("POST", "http://localhost/", files={"file": ('say "hi".wav', b"x")})
    (part,) = parse_form(request.read(), form_boundary(request.headers["content-type"]))
    assert part.filename == "say %22hi%22.wav"


def test_email_package_bodies_parse_back():
    message = email.message.EmailMessage(policy=email.policy.HTTP)
    message.make_mixed()
    message.set_type("multipart/form-data")
    for name, data, filename in [("model", b"tiny", None), ("file", b"\x00\r\n--\r\n\xff", "a.bin")]:
        part = email.message.EmailMessage(policy=email.policy.HTTP)
        part.set_content(data, maintype="application", subtype="octet-stream", cte="8bit")
        params = {"name": name} | ({"filename": filename} if filename else {})
        part.add_header("Content-Disposition", "form-data", **params)
        message.attach(part)
    raw = message.as_bytes(policy=email.policy.HTTP)
    body = raw.partition(b"\r\n\r\n")[2]
    parsed = parse_form(body, form_boundary(str(message["Content-Type"])))
    assert [(p.name, p.data, p.filename, p.content_type) for p in parsed] == [
        ("model", b"tiny", None, "application/octet-stream"),
        ("file", b"\x00\r\n--\r\n\xff", "a.bin", "application/octet-stream"),
    ]


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data;boundary="a b:c?"; charset=utf-8', b"a b:c?"),
        ("multipart/form-data; charset=utf-8; boundary=" + "x" * 70, b"x" * 70),
        ("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxk", b"----WebKitFormBoundary7MA4YWxk"),
    ],
)
def test_form_boundary(content_type, boundary):
    assert form_boundary(content_type) == boundary


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("application/json", "Content-Type is 'application/json', not multipart/form-data"),
        ("multipart/mixed; boundary=abc", "not multipart/form-data"),
        ("", "not multipart/form-data"),
        ("multipart/form-data", "has no boundary parameter"),
        ("multipart/form-data; boundary=", "is not 1 to 70"),
        ("multipart/form-data; boundary=" + "x" * 71, "is not 1 to 70"),
        ('multipart/form-data; boundary="ends in space "', "is not 1 to 70"),
        ("multipart/form-data; boundary=a\N{LATIN SMALL LETTER E WITH ACUTE}", "is not 1 to 70"),
        ('multipart/form-data; boundary="a\\"b"', "is not 1 to 70"),
    ],
)
def test_form_boundary_refusals(content_type, message):
    with pytest.raises(MultipartError, match=re.escape(message)) as info:
        form_boundary(content_type)
    assert "\n" not in str(info.value)


def test_every_malformed_body_is_refused_in_one_line():
    body = encode(PARTS)
    assert refusal(b"", BOUNDARY) == "multipart body has no opening boundary ------trio-asr-0123456789"
    assert "no opening boundary" in refusal(body.replace(BOUNDARY, b"other"))
    assert "no opening boundary" in refusal(b"--" + BOUNDARY + b"-x\r\n")
    truncated = "multipart body is truncated (no closing ------trio-asr-0123456789--)"
    assert refusal(body[: body.rindex(b"--" + BOUNDARY + b"--")]) == truncated
    assert refusal(body[: body.index(b"RIFF") + 6]) == truncated
    assert refusal(body[: body.index(b"\r\n\r\n")]) == "multipart body is truncated in a part's headers"
    part = b"--B\r\n%s\r\n\r\ndata\r\n--B--\r\n"
    assert refusal(part % b"Content-Type: text/plain", b"B") == "multipart part 1 has no Content-Disposition header"
    assert refusal(b"--B\r\n\r\ndata\r\n--B--", b"B") == "multipart part 1 has no Content-Disposition header"
    for disposition in (b"attachment; name=x", b'form-data; filename="a.wav"', b"form-data"):
        message = refusal(part % b"Content-Disposition: " + disposition, b"B")
        assert message == "multipart part 1 is not Content-Disposition form-data with a name"
    assert "malformed header line 'no colon here'" in refusal(part % b"no colon here", b"B")
    assert refusal(body, max_parts=4) == "multipart body has more than 4 parts"
    assert parse_form(body, BOUNDARY, max_parts=5) == PARTS
    big = [FormPart("file", b"x", "a" * 9000)]
    assert refusal(encode(big)) == "multipart part 1 has more than 8192 bytes of headers"
    assert parse_form(encode(big), BOUNDARY, max_part_header_bytes=10_000) == big
    assert "boundary must be 1 to 70 bytes" in refusal(body, b"")


def test_a_25_mb_file_part_parses_in_linear_time():
    audio = os.urandom(25 << 20)
    lookalikes = (b"\r\n--" + BOUNDARY + b"x") * 20_000  # each found, checked and passed over
    body = encode([FormPart("model", b"m"), FormPart("file", audio + lookalikes + audio, "big.wav")])
    started = time.perf_counter()
    parts = parse_form(body, BOUNDARY)
    elapsed = time.perf_counter() - started
    assert parts[1].data == audio + lookalikes + audio
    assert elapsed < 1.0, f"{elapsed:.2f} s for {len(body) >> 20} MiB"


BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
names = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.builds(
            FormPart,
            name=names,
            data=st.binary(max_size=300) | st.sampled_from([b"\r\n", b"\r\n--", b"--\r\n\r\n", b"\r"]),
            filename=st.none() | names,
            content_type=st.none() | st.sampled_from(["audio/wav", "text/plain; charset=utf-8"]),
        ),
        max_size=8,
    ),
    boundary=st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")),
    preamble=st.binary(max_size=40),
)
def test_random_parts_round_trip(parts, boundary, preamble):
    delimiter = b"\r\n--" + boundary.encode()
    assume(all(delimiter not in b"\r\n" + p.data + b"\r\n" for p in parts))
    assume(delimiter not in b"\r\n" + preamble)
    assert form_boundary(f"multipart/form-data; boundary={quote(boundary)}") == boundary.encode()
    body = encode(parts, boundary.encode(), preamble=preamble + b"\r\n" if preamble else b"")
    assert parse_form(body, boundary.encode()) == parts
