"""The page's static files: present as package data, self-contained, complete."""

from __future__ import annotations

import re

import pytest

from trio_asr.serving.web import ASSET_PATHS, find_asset


@pytest.mark.parametrize("path", sorted(ASSET_PATHS))
def test_every_asset_is_package_data_with_its_type(path):
    asset = find_asset(path)
    assert asset is not None and asset.body
    expected = "text/html" if ASSET_PATHS[path].endswith(".html") else "text/javascript"
    assert asset.content_type.startswith(expected)
    headers = dict(asset.headers())
    assert headers["content-length"] == str(len(asset.body))
    assert "default-src 'self'" in headers["content-security-policy"]


def test_unknown_paths_have_no_asset():
    for path in ("/x", "/../pyproject.toml", "/web/app.js", "", "/index.html/"):
        assert find_asset(path) is None


def test_the_page_loads_only_its_own_files():
    """No CDN, no external fonts or scripts: it must work offline."""
    for path in ASSET_PATHS:
        text = find_asset(path).body.decode()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert "import(" not in text and "importScripts" not in text
    page = find_asset("/").body.decode()
    referenced = set(re.findall(r'src="([^"]+)"', page))
    assert referenced == {"app.js"}
    app = find_asset("/app.js").body.decode()
    assert 'addModule("pcm-worklet.js")' in app
    assert all(f"/{name}" in ASSET_PATHS for name in referenced | {"pcm-worklet.js"})


def test_the_page_speaks_the_protocol_path_and_sends_the_token_as_a_query_parameter():
    app = find_asset("/app.js").body.decode()
    assert 'const WS_PATH = "/paddlespeech/asr/streaming"' in app
    assert 'searchParams.set("token", token)' in app
    assert '"wss://" : "ws://"' in app


def test_the_microphone_button_says_why_it_cannot_work_instead_of_throwing():
    """Browsers give AudioWorklet and getUserMedia to secure contexts only
    (https://, localhost): the page checks for them before using them, and
    its message says what to do (checked in a browser in test_web_page.py)."""
    app = find_asset("/app.js").body.decode()
    page = find_asset("/").body.decode()
    problem = app[app.index("function microphoneProblem()") :]
    for check in ("window.isSecureContext", "AudioWorkletNode", '"audioWorklet" in', "navigator.mediaDevices"):
        assert check in problem, check
    assert "only on https:// pages or on localhost" in problem and "--certfile" in problem
    handler = app[app.index('$("mic-start").onclick') :]
    assert handler.index("microphoneProblem()") < handler.index("run(startMicrophone)")
    assert '<p id="mic-note" hidden>' in page
