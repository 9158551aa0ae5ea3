"""Access tokens: loading, checking a request head, never leaking them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_asr.serving.auth import TokenError, TokenGate, load_tokens, presented_token, redact_target

SECRET = "s3cret-Token_1"


def gate(*tokens: str) -> TokenGate:
    return TokenGate.from_tokens(tokens)


def test_a_gate_without_tokens_allows_everything():
    assert not gate().enabled
    assert gate().allows(b"/paddlespeech/asr/streaming", [])


@pytest.mark.parametrize(
    "target, headers",
    [
        (b"/p", [(b"authorization", b"Bearer " + SECRET.encode())]),
        (b"/p", [(b"Authorization", b"bearer  " + SECRET.encode() + b" ")]),
        (b"/p?token=" + SECRET.encode(), []),
        (b"/p?x=1&token=" + SECRET.encode() + b"&y=2", [(b"host", b"h")]),
        ("/p?token=s3cret%2DToken%5F1", []),  # percent-encoded by a browser
    ],
)
def test_the_token_is_accepted_in_the_header_or_the_query(target, headers):
    assert gate("other", SECRET).allows(target, headers)


@pytest.mark.parametrize(
    "target, headers",
    [
        (b"/p", []),
        (b"/p?token=", []),
        (b"/p?token=" + SECRET.encode()[:-1], []),
        (b"/p?token=" + SECRET.encode() + b"x", []),
        (b"/p?Token=" + SECRET.encode(), []),
        (b"/p", [(b"authorization", b"Basic " + SECRET.encode())]),
        (b"/p", [(b"authorization", b"Bearer")]),
        # A wrong header is not rescued by a right query parameter.
        (b"/p?token=" + SECRET.encode(), [(b"authorization", b"Bearer nope")]),
    ],
)
def test_missing_or_wrong_tokens_are_refused(target, headers):
    assert not gate(SECRET).allows(target, headers)


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_only_the_exact_token_matches(candidate):
    assert gate(SECRET).allows(b"/", [(b"authorization", f"Bearer {candidate}".encode())]) == (candidate == SECRET)


def test_tokens_never_show_in_repr():
    assert SECRET not in repr(gate(SECRET))
    assert SECRET.encode().hex() not in repr(gate(SECRET))


def test_redact_target_hides_only_the_token():
    assert redact_target(b"/p?token=" + SECRET.encode() + b"&a=1") == "/p?token=***&a=1"
    assert redact_target("/p?a=1") == "/p?a=1"
    assert redact_target("/health") == "/health"
    assert SECRET not in redact_target(f"/p?a=b&token={SECRET}&token={SECRET}")


@pytest.mark.parametrize("key", ["%74oken", "t%6Fken", "%74%6F%6B%65%6E"])
def test_a_token_that_authenticates_is_never_logged_however_its_key_is_spelled(key):
    target = f"/p?{key}={SECRET}".encode()
    assert presented_token(target, []) == SECRET.encode(), "the key decodes to token, so it is one"
    assert SECRET not in redact_target(target)


def test_a_proxys_basic_login_leaves_the_query_token_counting():
    basic = [(b"authorization", b"Basic dXNlcjpwYXNz")]
    assert presented_token(b"/?token=q", basic) == b"q"
    assert presented_token(b"/", basic) is None


def test_presented_token_prefers_the_header():
    assert presented_token(b"/?token=q", [(b"authorization", b"Bearer h")]) == b"h"
    assert presented_token(b"/?token=q", []) == b"q"
    assert presented_token(b"/", []) is None


def test_load_tokens_from_flags_and_files(tmp_path):
    file = tmp_path / "tokens.txt"
    file.write_text("# team A\n  alpha-1  \n\nbeta/2==\nalpha-1\n")
    assert load_tokens(["gamma"], [file]) == ("gamma", "alpha-1", "beta/2==")


@pytest.mark.parametrize(
    "content, message",
    [
        ("has space\n", "line 1: access tokens must be printable ASCII"),
        ("ok\nnon-ascii-\u00e9\n", "line 2: access tokens must be printable ASCII"),
        ("# only a comment\n\n", "has no tokens"),
    ],
)
def test_bad_token_files_say_where_without_the_token(tmp_path, content, message):
    file = tmp_path / "tokens.txt"
    file.write_text(content)
    with pytest.raises(TokenError, match=message) as info:
        load_tokens([], [file])
    assert "space" not in str(info.value).replace("without spaces", "")
    assert "\u00e9" not in str(info.value)


def test_unreadable_tokens_file_and_bad_flags(tmp_path):
    with pytest.raises(TokenError, match="cannot read tokens file"):
        load_tokens([], [tmp_path / "missing.txt"])
    with pytest.raises(TokenError, match="empty access token"):
        load_tokens([""])
    with pytest.raises(TokenError, match="longer than"):
        load_tokens(["x" * 5000])
