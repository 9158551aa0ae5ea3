"""Operations end to end: access tokens, TLS, /metrics, the page over HTTP, JSON logs.

A real server on the fixture model, real clients: ours (library and CLI), a
``websockets`` client, and raw HTTP.  Certificates are made at test time
with ``trustme``.  Metrics are scraped over HTTP and parsed with
prometheus_client's own parser, then checked against what the test did.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
import trustme
import websockets.sync.client
from paths import AUDIO_DIR
from prometheus_client.parser import text_string_to_metric_families
from serverutil import end_msg, expect_close, recv_json, start_msg, ws_url

from trio_asr.audio import read_wav
from trio_asr.cli.commands import main
from trio_asr.cli.client import ClientError, stream_file
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.logs import configure_logging
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.serving.server import Server, ServerStartError, exposure_warning, serve
from trio_asr.serving.tls import client_context
from trio_asr.cli.transcribe import transcribe_file

SPEECH = AUDIO_DIR / "english.wav"
TOKEN_A, TOKEN_B = "tok-A-0123456789", "tok-B-abcdefghij"


@pytest.fixture(scope="module")
def recognizer(zipformer2_model_dir) -> Recognizer:
    return Recognizer(load_model(zipformer2_model_dir), beam=10)


@pytest.fixture(scope="module")
def expected(recognizer) -> str:
    return transcribe_file(recognizer, SPEECH).text


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return certfile, keyfile, cafile


async def start(nursery, tmp_path: Path, recognizer, **settings) -> Server:
    config = ServerConfig(
        host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", workers=2, handshake_timeout=5.0, **settings
    )
    return await nursery.start(serve, config, recognizer)


async def http(port: int, path: str, headers: str = "", ssl_context: ssl.SSLContext | None = None):
    """GET ``path``; (status, headers dict, body)."""
    with trio.fail_after(10):
        if ssl_context is None:
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        else:
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=ssl_context, https_compatible=True
            )
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), {k.lower(): v for k, v in fields.items()}, body


async def rejected_status(url: str, headers=()) -> int:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url, extra_headers=list(headers)):
            pass
    return info.value.status_code


def scrape_text(body: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


# ------------------------------------------------------------------ tokens


async def test_tokens_end_to_end(nursery, tmp_path, recognizer, expected, caplog):
    caplog.set_level(logging.DEBUG)
    tokens_file = tmp_path / "tokens.txt"
    tokens_file.write_text(f"# clients\n{TOKEN_B}\n")
    server = await start(nursery, tmp_path, recognizer, auth_token=(TOKEN_A,), auth_tokens_file=tokens_file)
    url = ws_url(server.port)

    # Refused before the upgrade: no token, wrong token, wrong scheme, wrong query.
    assert await rejected_status(url) == 401
    assert await rejected_status(url, [(b"authorization", b"Bearer nope")]) == 401
    assert await rejected_status(url, [(b"authorization", f"Basic {TOKEN_A}".encode())]) == 401
    assert await rejected_status(url + "?token=" + TOKEN_A[:-1]) == 401
    status, headers, body = await http(server.port, "/paddlespeech/asr/streaming",
                                       "Upgrade: websocket\r\nConnection: Upgrade\r\n")  # fmt: skip
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert "access token" in json.loads(body)["message"]

    # Accepted: the header (our client), the query parameter (browsers), either token.
    final = await stream_file(url, SPEECH, token=TOKEN_A)
    assert final["result"] == expected
    final = await stream_file(url + "?token=" + TOKEN_B, SPEECH)
    assert final["result"] == expected
    with pytest.raises(ClientError, match="HTTP 401.*--token"):
        await stream_file(url, SPEECH)

    # /health and the page stay open; /metrics needs the token.
    assert (await http(server.port, "/health"))[0] == 200
    assert (await http(server.port, "/"))[0] == 200
    assert (await http(server.port, "/metrics"))[0] == 401
    status, _, body = await http(server.port, "/metrics", f"Authorization: Bearer {TOKEN_B}\r\n")
    assert status == 200
    samples = scrape_text(body)
    assert samples[("trio_asr_unauthorized_total", ())] == 7  # 5 upgrades, 1 client, 1 /metrics
    assert samples[("trio_asr_streams_total", (("outcome", "completed"),))] == 2

    server_side = [
        r.getMessage() for r in caplog.records
        if not (r.name == "trio-websocket" and ("client-" in r.getMessage() or "Connecting to" in r.getMessage()))
    ]  # fmt: skip
    assert any("connection" in line for line in server_side)
    for token in (TOKEN_A, TOKEN_B):
        assert not any(token in line for line in server_side)


async def test_metrics_and_page_are_configurable(nursery, tmp_path, recognizer):
    server = await start(nursery, tmp_path, recognizer, auth_token=(TOKEN_A,), metrics_auth=False)
    assert (await http(server.port, "/metrics"))[0] == 200
    closed = await start(nursery, tmp_path, recognizer, metrics=False, page=False)
    for path in ("/metrics", "/", "/app.js"):
        assert (await http(closed.port, path))[0] == 404


async def test_page_assets_are_served_with_their_types(nursery, tmp_path, recognizer):
    server = await start(nursery, tmp_path, recognizer)
    status, headers, body = await http(server.port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="app.js">' in body
    for path in ("/app.js", "/pcm-worklet.js"):
        status, headers, body = await http(server.port, path + "?v=1")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert int(headers["content-length"]) == len(body) > 0
    assert (await http(server.port, "/nope.js"))[0] == 404


async def test_bad_token_files_stop_the_server_with_one_line(tmp_path, recognizer):
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path, auth_tokens_file=tmp_path / "none.txt")
    with pytest.raises(ServerStartError, match="cannot read tokens file .*none.txt"):
        await Server(config, recognizer).open()


def test_exposure_warning_only_without_tls_and_tokens_off_loopback():
    assert exposure_warning("0.0.0.0", tls=False, tokens=False)
    assert exposure_warning("", tls=False, tokens=False)
    assert exposure_warning("192.168.1.5", tls=False, tokens=False)
    assert "--auth-token" in exposure_warning("::", tls=False, tokens=False)
    assert "saved to disk" in exposure_warning("::", tls=False, tokens=False)
    assert "saved to disk" not in exposure_warning("::", tls=False, tokens=False, saves_audio=False)
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert exposure_warning(host, tls=False, tokens=False) is None
    assert exposure_warning("0.0.0.0", tls=True, tokens=False) is None
    assert exposure_warning("0.0.0.0", tls=False, tokens=True) is None


# ------------------------------------------------------------------ TLS


async def test_tls_end_to_end(nursery, tmp_path, recognizer, expected, tls_files, capsys):
    certfile, keyfile, cafile = tls_files
    server = await start(nursery, tmp_path, recognizer, certfile=certfile, keyfile=keyfile, auth_token=(TOKEN_A,))
    assert server.scheme == "wss"
    url = f"wss://127.0.0.1:{server.port}/paddlespeech/asr/streaming"
    trusted = client_context(cafile)

    # Our client library.
    final = await stream_file(url, SPEECH, token=TOKEN_A, ssl_context=trusted)
    assert final["result"] == expected

    # The `websockets` library, PaddleSpeech-style lock-step, token in the query.
    pcm = (read_wav(SPEECH)[0][:, 0] * 32768).astype("<i2").tobytes()

    def websockets_session() -> str:
        with websockets.sync.client.connect(url + "?token=" + TOKEN_A, ssl=trusted) as ws:
            ws.send(start_msg("w.wav"))
            assert json.loads(ws.recv(timeout=10))["signal"] == "server_ready"
            for i in range(0, len(pcm), 2720):
                ws.send(pcm[i : i + 2720])
                assert "result" in json.loads(ws.recv(timeout=10))
            ws.send(end_msg("w.wav"))
            return json.loads(ws.recv(timeout=10))["result"]

    assert await trio.to_thread.run_sync(websockets_session) == expected

    # Our command-line client (in a thread: it runs its own trio loop).
    argv = ["client", "--url", url, "--token", TOKEN_A, "--cafile", str(cafile), str(SPEECH)]
    assert await trio.to_thread.run_sync(main, argv) == 0
    assert capsys.readouterr().out.strip() == expected

    # https for the plain routes.
    assert (await http(server.port, "/health", ssl_context=trusted))[0] == 200
    status, headers, _ = await http(server.port, "/", ssl_context=trusted)
    assert status == 200 and headers["content-type"].startswith("text/html")

    # An untrusted certificate and plain ws:// fail with one clear line.
    with pytest.raises(ClientError, match="certificate is not trusted.*--cafile"):
        await stream_file(url, SPEECH, token=TOKEN_A, ssl_context=client_context())
    with pytest.raises(ClientError, match="HTTP 400.*speaks TLS: use wss://"):
        await stream_file(ws_url(server.port), SPEECH, token=TOKEN_A)
    status, _, body = await http(server.port, "/health")
    assert status == 400 and b"speaks TLS" in body
    assert len(list(server.config.audio_dir.glob("*.wav"))) == 3


async def test_tls_files_that_do_not_work_stop_the_server(tmp_path, recognizer, tls_files):
    certfile, _, _ = tls_files
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path, certfile=certfile, keyfile=tmp_path / "k")
    with pytest.raises(ServerStartError, match="TLS key file .* does not exist"):
        await Server(config, recognizer).open()


# ------------------------------------------------------------------ metrics


async def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    status, headers, body = await http(server.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return scrape_text(body)


async def lockstep(ws, pcm: bytes, frame: int) -> int:
    """Send ``pcm`` in frames, each after the previous reply; the frame count."""
    frames = 0
    for i in range(0, len(pcm), frame):
        await ws.send_message(pcm[i : i + frame])
        assert "result" in await recv_json(ws)
        frames += 1
    return frames


async def test_metrics_count_what_happened(nursery, tmp_path, recognizer, expected):
    server = await start(nursery, tmp_path, recognizer, max_connections=2)
    url = ws_url(server.port)
    samples, rate = read_wav(SPEECH)
    pcm = (samples[:, 0] * 32768).astype("<i2").tobytes()
    frames = 0

    # Two completed streams on one connection (16 kHz), one at 8 kHz stereo on another.
    async with trio_websocket.open_websocket_url(url) as ws:
        for name in ("a.wav", "b.wav"):
            await ws.send_message(start_msg(name))
            assert (await recv_json(ws))["signal"] == "server_ready"
            frames += await lockstep(ws, pcm, 2720)
            await ws.send_message(end_msg(name))
            assert (await recv_json(ws))["result"] == expected
    stereo = np.repeat(np.frombuffer(pcm, "<i2")[::2, None], 2, axis=1).tobytes()
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(start_msg("c.wav", sampleRate=8000, channels=2))
        await recv_json(ws)
        frames += await lockstep(ws, stereo, 4000)
        await ws.send_message(end_msg("c.wav"))
        await recv_json(ws)

    # A client that vanishes mid-stream; one that sends garbage mid-stream (1007),
    # while the other holds the second slot: a third connection is refused (503 full).
    vanish = await trio_websocket.connect_websocket_url(nursery, url)
    await vanish.send_message(start_msg("d.wav"))
    await recv_json(vanish)
    frames += await lockstep(vanish, pcm[:16000], 3200)
    garbage = await trio_websocket.connect_websocket_url(nursery, url)
    await garbage.send_message(start_msg("e.wav"))
    await recv_json(garbage)
    frames += await lockstep(garbage, pcm[:6400], 3200)
    assert await rejected_status(url) == 503
    await vanish._close_stream()  # no closing handshake: the peer is just gone
    await garbage.send_message("{not json")
    assert (await recv_json(garbage))["status"] == "error"
    assert await expect_close(garbage) == 1007

    with trio.fail_after(10):
        while (s := await scrape(server))[("trio_asr_connections_open", ())] != 0:
            await trio.sleep(0.05)

    assert s[("trio_asr_connections_total", ())] == 4
    assert s[("trio_asr_streams_total", (("outcome", "completed"),))] == 3
    assert s[("trio_asr_streams_total", (("outcome", "disconnected"),))] == 1
    assert s[("trio_asr_streams_total", (("outcome", "error"),))] == 1
    assert s[("trio_asr_streams_total", (("outcome", "aborted"),))] == 0
    assert s[("trio_asr_close_codes_total", (("code", "1007"),))] == 1
    assert s[("trio_asr_admission_refusals_total", (("reason", "full"),))] == 1
    assert s[("trio_asr_admission_refusals_total", (("reason", "overloaded"),))] == 0
    sent_seconds = 3 * len(pcm) / 2 / rate + (16000 + 6400) / 2 / rate
    assert s[("trio_asr_audio_received_seconds_total", ())] == pytest.approx(sent_seconds, rel=1e-9)
    assert s[("trio_asr_partial_reply_latency_seconds_count", ())] == frames
    assert s[("trio_asr_partial_reply_latency_seconds_bucket", (("le", "+Inf"),))] == frames
    saved = sorted(server.config.audio_dir.glob("*.wav"))
    assert len(saved) == 5
    assert s[("trio_asr_saved_audio_bytes_total", ())] == sum(p.stat().st_size for p in saved)
    assert s[("trio_asr_audio_save_failures_total", ())] == 0
    batches = s[("trio_asr_model_batch_size_count", ())]
    assert batches >= 1 and s[("trio_asr_model_batch_size_sum", ())] >= batches
    assert s[("trio_asr_model_queue_delay_seconds_count", ())] == batches
    assert s[("trio_asr_decode_cpu_seconds_total", ())] > 0
    assert s[("trio_asr_model_queue_delay_current_seconds", ())] >= 0
    model = dict(next(labels for (name, labels) in s if name == "trio_asr_model_info"))
    assert model["sample_rate"] == "16000" and model["format"]


async def test_save_failures_are_counted(nursery, tmp_path, recognizer):
    server = await start(nursery, tmp_path, recognizer)
    audio_dir = server.config.audio_dir
    audio_dir.rmdir()
    audio_dir.write_text("a file where the directory was")
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(b"\x00\x00" * 100)  # the file is opened at the first audio
        assert (await recv_json(ws))["status"] == "error"
    s = await scrape(server)
    assert s[("trio_asr_audio_save_failures_total", ())] == 1
    assert s[("trio_asr_saved_audio_bytes_total", ())] == 0


def test_two_servers_have_independent_metrics(tmp_path, recognizer):
    a = Server(ServerConfig(audio_dir=tmp_path), recognizer)
    b = Server(ServerConfig(audio_dir=tmp_path), recognizer)
    a.metrics.connection_opened()
    assert scrape_text(b.metrics.exposition()[0])[("trio_asr_connections_total", ())] == 0


# ------------------------------------------------------------------ logs


@pytest.fixture
def json_log():
    """Route logging into a buffer as JSON at info level; yields the parsed lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    lock = threading.Lock()

    def lines(**options) -> callable:
        configure_logging("info", "json", stream=buffer, **options)
        return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]

    with lock:
        yield lines
    configure_logging(stream=io.StringIO())  # transcripts off again
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.mark.parametrize("log_transcripts", [False, True])
async def test_json_logs_of_a_real_session(nursery, tmp_path, recognizer, expected, json_log, log_transcripts):
    records = json_log(log_transcripts=log_transcripts)
    server = await start(nursery, tmp_path, recognizer, auth_token=(TOKEN_A,))
    await stream_file(ws_url(server.port) + "?token=" + TOKEN_A, SPEECH)
    with trio.fail_after(10):
        while not any(r.get("event") == "connection" for r in records()):
            await trio.sleep(0.05)
    events = {r.get("event"): r for r in records()}
    assert events["listening"]["port"] == server.port and events["listening"]["auth"] is True
    stream = events["stream"]
    assert stream["name"] == "english.wav" and stream["outcome"] == "finished"
    assert stream["audio_s"] == pytest.approx(1.12, abs=0.01)
    assert Path(stream["saved"]).parent == server.config.audio_dir
    connection = events["connection"]
    assert connection["streams"] == 1 and connection["level"] == "info"
    text = json.dumps(records(), ensure_ascii=False)
    assert TOKEN_A not in text
    assert (expected in text) == log_transcripts
    if log_transcripts:
        assert stream["text"] == expected


# ------------------------------------------------------------------ settings


def test_operations_settings_from_toml_and_flags(tmp_path):
    from trio_asr.serving.config import ConfigError
    from trio_asr.serving.config_file import load_config

    toml = tmp_path / "server.toml"
    toml.write_text(
        '[server]\ncertfile = "c.pem"\nkeyfile = "k.pem"\nauth_token = ["one-secret", "two-secret"]\n'
        'log_format = "json"\nmetrics_auth = false\npage = false\n'
    )
    config = load_config(toml, {"auth_token": ["flag-secret"], "log_transcripts": True})
    assert config.auth_token == ("flag-secret",)  # flags win over the file
    assert (config.certfile, config.keyfile) == (Path("c.pem"), Path("k.pem"))
    assert (config.log_format, config.log_transcripts, config.metrics_auth, config.page) == ("json", True, False, False)
    assert "secret" not in repr(config)
    toml.write_text('auth_token = "not-a-list-secret"\n')
    with pytest.raises(ConfigError, match="auth_token must be a list of strings") as info:
        load_config(toml)
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="keyfile needs certfile"):
        load_config(None, {"keyfile": "k.pem"})
    with pytest.raises(ConfigError) as info:
        load_config(None, {"log_format": "xml"})
    assert str(info.value) == "log_format must be one of text, json, got 'xml'"
