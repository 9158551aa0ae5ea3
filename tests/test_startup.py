"""The line ``trio-asr serve`` prints once it listens: addresses that work.

A browser cannot open ``http://0.0.0.0:PORT/``, and it offers the microphone
only on ``https://`` pages or on localhost; so the printed addresses are
loopback ones for a wildcard or loopback bind, the bound host otherwise.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_asr.serving.addresses import client_host, is_loopback, startup_line
from trio_asr.serving.config import ServerConfig

WS_PATH = "/paddlespeech/asr/streaming"


def line_for(**settings: object) -> str:
    config = ServerConfig(save_audio=False, **settings)  # type: ignore[arg-type]
    scheme = "wss" if config.certfile is not None else "ws"
    return startup_line(config, scheme=scheme, port=8090, ws_path=WS_PATH, model_dir=Path("/m"))


@pytest.mark.parametrize(
    ("host", "url_host"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"), ("127.0.0.1", "127.0.0.1"),
     ("localhost", "localhost"), ("::1", "[::1]"), ("192.168.1.5", "192.168.1.5"), ("asr.example", "asr.example")],
)  # fmt: skip
def test_the_printed_addresses_are_ones_a_browser_can_open(host, url_host):
    line = line_for(host=host)
    assert line.startswith(f"trio-asr: serving ws://{url_host}:8090{WS_PATH} (")
    assert f"; microphone page at http://{url_host}:8090/" in line
    assert "0.0.0.0:" not in line and "//:" not in line and "//[::]" not in line
    assert client_host(host) == url_host


def test_the_line_says_where_it_listens_and_what_the_microphone_needs():
    wildcard = line_for(host="0.0.0.0")
    assert "listening on every interface (0.0.0.0)" in wildcard
    assert "its microphone works on other machines only over https: --certfile" in wildcard
    assert "its microphone needs https: --certfile" in line_for(host="192.168.1.5")
    for host in ("127.0.0.1", "localhost", "::1"):
        assert "listening on every interface" not in line_for(host=host)
        assert "microphone works" not in line_for(host=host) and is_loopback(host)
    assert "microphone page" not in line_for(host="0.0.0.0", page=False)
    assert "model /m; not saving audio" in wildcard


def test_with_tls_the_page_is_https(tmp_path):
    (tmp_path / "cert.pem").write_text("unused: the line does not read it")
    line = line_for(host="0.0.0.0", certfile=tmp_path / "cert.pem")
    assert line.startswith(f"trio-asr: serving wss://127.0.0.1:8090{WS_PATH} (")
    assert "microphone page at https://127.0.0.1:8090/" in line and "--certfile" not in line


@contextlib.contextmanager
def serving(model_dir: Path, *flags: str) -> Iterator[str]:
    """``trio-asr serve`` in a process; its startup line (stopped with SIGINT)."""
    cmd = [sys.executable, "-m", "trio_asr", "serve", "--port", "0", "--model", str(model_dir), "--no-save-audio"]
    proc = subprocess.Popen([*cmd, *flags], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # an "exposed" log line may come first
            if line.startswith("trio-asr: serving"):
                yield line.rstrip("\n")
                break
        else:
            pytest.fail(f"serve exited without its startup line: {proc.wait()}")
    finally:
        if sys.platform == "win32":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def page_url(line: str) -> str:
    found = re.search(r"microphone page at (https?://\S+?/)(?:;|\s|$)", line)
    assert found, line
    return found.group(1)


def get(url: str) -> tuple[int, bytes]:
    assert url.startswith("http://")
    host, _, port = url[len("http://") :].rstrip("/").rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_serve_on_every_interface_prints_a_page_address_that_works(zipformer2_model_dir):
    with serving(zipformer2_model_dir, "--host", "0.0.0.0") as line:
        page = page_url(line)
        assert page.startswith("http://127.0.0.1:") and page.endswith("/")
        status, body = get(page)
    assert status == 200 and b"Start microphone" in body
    assert "0.0.0.0:" not in line


def test_the_default_host_is_loopback_and_the_line_says_how_to_accept_others():
    """A first run is reachable from this machine only (as uvicorn's), so it
    needs no token and prints no "exposed" warning."""
    from trio_asr.serving.config_file import load_config
    from trio_asr.serving.server import exposure_warning

    config = load_config(None, {})
    assert ServerConfig().host == config.host == "127.0.0.1"
    assert exposure_warning(config.host, tls=False, tokens=False) is None
    line = line_for()
    assert line.endswith("; only this machine can connect (to accept others: --host 0.0.0.0 with --auth-token)")
    with_token = line_for(auth_token=("t",))
    assert with_token.endswith("; only this machine can connect (to accept others: --host 0.0.0.0)")
    assert "only this machine" not in line_for(host="0.0.0.0")


def test_the_serve_flag_and_toml_default_to_loopback(tmp_path):
    from trio_asr.cli.commands import build_parser
    from trio_asr.serving.config_file import load_config

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert "(default: '127.0.0.1')" in " ".join(serve.format_help().split())
    path = tmp_path / "server.toml"
    path.write_text('host = "0.0.0.0"\n')
    assert load_config(path, {}).host == "0.0.0.0"
    assert load_config(path, {"host": "::1"}).host == "::1"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_serve_without_host_listens_on_loopback_and_says_so(zipformer2_model_dir):
    with serving(zipformer2_model_dir) as line:
        url = line.split()[2]
        page = page_url(line)
        status, _ = get(page)
    assert url.startswith("ws://127.0.0.1:") and url.endswith(WS_PATH)
    assert status == 200
    assert "exposed" not in line and "--host 0.0.0.0 with --auth-token" in line
