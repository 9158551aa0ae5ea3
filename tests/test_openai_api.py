"""OpenAI's audio API on a running server, driven by the real ``openai`` client and by curl.

- every response format, word and segment times, and ``stream=True``, with
  the text ``trio-asr transcribe`` gives for the same file (the second
  pass's offline model, and the streaming model on a server without one);
- ``GET /v1/models``; tokens (401 without, with the WebSocket's tokens);
- FLAC uploads over https with a token, by curl;
- bad input: no file, an empty file, a non-audio file, an unknown format,
  a file over the limits, a truncated form: each the status and error body
  OpenAI's clients expect, and the server goes on;
- admission: uploads beyond ``max_uploads`` get 429; a WebSocket stream and
  uploads at the same time on one port.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile
import trio
import trio_websocket
import trustme
from offlineutil import read_wav
from paths import SPEECH_FILES
from serverutil import end_msg, make_config, recv_json, start_msg, ws_url

from trio_asr.cli.commands import _build_recognizer, main
from trio_asr.recognition.offline.pieces import MAX_PIECE_S
from trio_asr.serving import transcriptions
from trio_asr.serving.server import Server, serve

TOKEN = "s3cret-token"
RATE = 16000


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A WAV clip, the same as FLAC, and a long WAV (over two pieces)."""
    directory = tmp_path_factory.mktemp("uploads")
    clip = read_wav(SPEECH_FILES[0])
    long = np.concatenate([read_wav(p) for p in SPEECH_FILES] * 4)
    assert len(long) > 2 * MAX_PIECE_S * RATE
    made = {"wav": directory / "clip.wav", "flac": directory / "clip.flac", "long": directory / "long.wav"}
    soundfile.write(made["wav"], clip, RATE, subtype="PCM_16")
    soundfile.write(made["flac"], clip, RATE)
    soundfile.write(made["long"], long, RATE, subtype="PCM_16")
    return made


def cli_text(*argv: str) -> str:
    """What ``trio-asr transcribe --json ARGV`` says a file's text is."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["transcribe", "--json", *argv]) == 0
    return str(json.loads(out.getvalue().splitlines()[0])["text"])


async def start(nursery: trio.Nursery, tmp_path: Path, model_dir: Path, **overrides: object) -> Server:
    config = make_config(tmp_path, save_audio=False, model=model_dir, auth_token=(TOKEN,), **overrides)
    server: Server = await nursery.start(serve, config, _build_recognizer(config)[1])
    return server


def client(server: Server, scheme: str = "http", api_key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{scheme}://127.0.0.1:{server.port}/v1", api_key=api_key, max_retries=0,
                         timeout=60)


async def create(server: Server, path: Path, **kw: object) -> object:
    def call() -> object:
        with open(path, "rb") as f:
            return client(server).audio.transcriptions.create(model="whisper-1", file=f, **kw)

    return await trio.to_thread.run_sync(call)


async def test_every_format_gives_the_text_transcribe_gives(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir, files
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    expected = await trio.to_thread.run_sync(cli_text, "--model", str(sense_voice_dir), "--itn", str(files["wav"]))
    assert expected
    as_json = await create(server, files["wav"])
    assert as_json.text == expected  # type: ignore[attr-defined]
    as_text = await create(server, files["flac"], response_format="text")
    assert str(as_text).strip() == expected
    verbose = await create(server, files["wav"], response_format="verbose_json",
                           timestamp_granularities=["word", "segment"])  # fmt: skip
    assert verbose.text == expected and verbose.segments and verbose.words  # type: ignore[attr-defined]
    assert verbose.language in {"chinese", "english", "cantonese", "japanese", "korean", ""}  # type: ignore[attr-defined]
    assert verbose.duration == pytest.approx(len(read_wav(SPEECH_FILES[0])) / RATE, abs=0.01)  # type: ignore[attr-defined]
    assert "".join(w.word for w in verbose.words).replace(" ", "") in expected.replace(" ", "")  # type: ignore[attr-defined]
    srt = str(await create(server, files["wav"], response_format="srt"))
    assert srt.startswith("1\n00:00:00,000 --> ") and expected in srt
    vtt = str(await create(server, files["wav"], response_format="vtt"))
    assert vtt.startswith("WEBVTT") and expected in vtt


async def test_a_long_file_and_its_streamed_events(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir, files
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    expected = await trio.to_thread.run_sync(cli_text, "--model", str(sense_voice_dir), "--itn", str(files["long"]))

    def stream() -> list[object]:
        with open(files["long"], "rb") as f:
            return list(client(server).audio.transcriptions.create(model="m", file=f, stream=True))

    events = await trio.to_thread.run_sync(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]  # type: ignore[attr-defined]
    done = [e.text for e in events if e.type == "transcript.text.done"]  # type: ignore[attr-defined]
    assert len(deltas) >= 3 and done == [expected] and "".join(deltas) == expected
    verbose = await create(server, files["long"], response_format="verbose_json")
    assert verbose.text == expected and len(verbose.segments) == len(deltas)  # type: ignore[attr-defined]


async def test_without_a_second_pass_the_streaming_model_answers(
    nursery, tmp_path, zipformer2_model_dir, files
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    expected = await trio.to_thread.run_sync(cli_text, "--model", str(zipformer2_model_dir), str(files["wav"]))
    assert (await create(server, files["wav"])).text == expected  # type: ignore[attr-defined]
    models = await trio.to_thread.run_sync(lambda: client(server).models.list())
    assert [m.id for m in models.data] == [zipformer2_model_dir.name]


async def test_tokens_and_errors_as_openai_shapes_them(nursery, tmp_path, zipformer2_model_dir, files) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, max_upload_bytes=200_000, max_upload_seconds=3.0)

    def call(path: Path | None = None, data: bytes | None = None, api_key: str = TOKEN, **kw: object) -> object:
        upload = (path.name, path.read_bytes()) if path is not None else ("x.bin", data)
        return client(server, api_key=api_key).audio.transcriptions.create(model="m", file=upload, **kw)

    async def error_of(*args: object, **kw: object) -> tuple[int, dict]:
        with pytest.raises(openai.APIStatusError) as info:
            await trio.to_thread.run_sync(lambda: call(*args, **kw))
        body = info.value.body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
        assert body["message"] and "\n" not in body["message"]
        return info.value.status_code, body

    status, body = await error_of(files["wav"], api_key="wrong")
    assert status == 401 and body["type"] == "authentication_error"
    status, body = await error_of(None, b"")
    assert status == 400 and body["param"] == "file"
    status, body = await error_of(None, b"%PDF-1.4 not audio at all" * 10)
    assert status == 415 and body["code"] == "unsupported_format"
    status, body = await error_of(None, files["wav"].read_bytes()[:30])
    assert status == 400 and body["code"] == "invalid_audio"
    status, body = await error_of(files["wav"], response_format="docx")
    assert status == 400 and body["param"] == "response_format"
    status, body = await error_of(files["wav"], extra_body={"nbest": "many"})
    assert status == 400 and body["param"] == "nbest"
    status, body = await error_of(files["long"])  # over max_upload_bytes
    assert status == 413 and body["code"] == "file_too_large"
    status, body = await error_of(None, soundfile_bytes(np.zeros(4 * RATE, np.float32)))  # over max_upload_seconds
    assert status == 413 and body["code"] == "audio_too_long"
    # and the server goes on
    assert (await trio.to_thread.run_sync(lambda: call(files["wav"]))).text  # type: ignore[attr-defined]


async def test_a_head_too_large_is_an_error_the_openai_client_reads(nursery, tmp_path, zipformer2_model_dir, files) -> None:
    """A head refused before its path is known (431 here) has a body both
    kinds of client read: the openai package's error, and our message."""
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    big = client(server).with_options(default_headers={"X-Big": "a" * 20000}, max_retries=0)
    upload = (files["wav"].name, files["wav"].read_bytes())
    with pytest.raises(openai.APIStatusError) as info:
        await trio.to_thread.run_sync(lambda: big.audio.transcriptions.create(model="m", file=upload))
    assert info.value.status_code == 431
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and "16384" in body["message"]
    assert "16384" in info.value.message
    response = info.value.response.json()
    assert response["status"] == "error" and response["message"] == body["message"]


async def test_errors_found_while_decoding_are_openai_errors_streamed_or_not(
    nursery, tmp_path, zipformer2_model_dir, files
) -> None:
    """A rate nothing can be resampled from, and a hotword the streaming
    model cannot spell, are found only once decoding starts: still a 400 in
    OpenAI's shape, or with ``stream=True`` (whose events have begun) an
    error event that the client raises, and the server goes on."""
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    odd_rate = io.BytesIO()
    soundfile.write(odd_rate, np.zeros(50, np.int16), 7, format="WAV", subtype="PCM_16")

    def call(upload: tuple[str, bytes], **kw: object) -> object:
        return client(server).audio.transcriptions.create(model="m", file=upload, **kw)

    async def error_of(upload: tuple[str, bytes], **kw: object) -> openai.APIError:
        with pytest.raises(openai.APIError) as info:
            await trio.to_thread.run_sync(lambda: list(call(upload, stream=True, **kw)) if kw.pop("streamed", False)
                                          else call(upload, **kw))  # fmt: skip
        assert info.value.message and "\n" not in info.value.message
        return info.value

    unspellable = json.dumps(["\u2603\u2604"])
    for streamed in (False, True):
        error = await error_of(("odd.wav", odd_rate.getvalue()), streamed=streamed)
        assert isinstance(error.body, dict) and error.body["param"] == "file", error.body
        assert "7 Hz" in error.message
        error = await error_of((files["wav"].name, files["wav"].read_bytes()), streamed=streamed,
                               extra_body={"hotwords": unspellable})  # fmt: skip
        assert isinstance(error.body, dict) and error.body["param"] == "hotwords", error.body
        if not streamed:
            assert isinstance(error, openai.APIStatusError) and error.status_code == 400
    assert (await trio.to_thread.run_sync(lambda: call((files["wav"].name, files["wav"].read_bytes())))).text  # type: ignore[attr-defined]


async def test_a_failure_nobody_expected_is_still_an_openai_error(
    nursery, tmp_path, zipformer2_model_dir, files, monkeypatch, caplog
) -> None:
    """A bug in decoding: a 500 in OpenAI's shape (a complete error event
    when streaming), its traceback in the log once, and the server goes on."""
    from trio_asr.serving.file_transcriber import FileTranscriber

    server = await start(nursery, tmp_path, zipformer2_model_dir)
    real = FileTranscriber.transcribe
    failing = {"yes": True}

    async def transcribe(self: FileTranscriber, *args: object, **kw: object) -> object:
        if failing["yes"]:
            raise RuntimeError("an unexpected failure")
        return await real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(FileTranscriber, "transcribe", transcribe)
    upload = (files["wav"].name, files["wav"].read_bytes())
    for streamed in (False, True):
        with pytest.raises(openai.APIError) as info:
            await trio.to_thread.run_sync(lambda: list(client(server).audio.transcriptions.create(
                model="m", file=upload, stream=True)) if streamed else
                client(server).audio.transcriptions.create(model="m", file=upload))  # fmt: skip
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error", info.value.body
        if not streamed:
            assert isinstance(info.value, openai.APIStatusError) and info.value.status_code == 500
    assert sum("an unexpected failure" in r.getMessage() or (r.exc_info and "an unexpected failure" in
               str(r.exc_info[1])) for r in caplog.records) == 2  # fmt: skip
    failing["yes"] = False
    assert (await trio.to_thread.run_sync(lambda: client(server).audio.transcriptions.create(
        model="m", file=upload))).text  # type: ignore[attr-defined]


def soundfile_bytes(samples: np.ndarray, format: str = "FLAC") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, RATE, format=format)
    return out.getvalue()


async def raw_post(port: int, body: bytes, headers: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n{headers}\r\n"
        await stream.send_all(head.encode() + body)
        data = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


async def test_a_form_that_is_not_one(nursery, tmp_path, zipformer2_model_dir) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    body = b"--xyz\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF"
    status, reply = await raw_post(server.port, body, f"content-type: multipart/form-data; boundary=xyz\r\n"
                                   f"content-length: {len(body)}\r\n")  # fmt: skip
    assert status == 400 and "error" in json.loads(reply)
    no_file = b"--xyz\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--xyz--\r\n"
    status, reply = await raw_post(server.port, no_file, f"content-type: multipart/form-data; boundary=xyz\r\n"
                                   f"content-length: {len(no_file)}\r\n")  # fmt: skip
    assert status == 400 and json.loads(reply)["error"]["param"] == "file"
    status, reply = await raw_post(server.port, b"{}", "content-type: application/json\r\ncontent-length: 2\r\n")
    assert status == 400 and json.loads(reply)["error"]["message"]
    status, reply = await raw_post(server.port, b"", "content-type: multipart/form-data; boundary=xyz\r\n"
                                   f"content-length: {server.config.max_upload_bytes * 2}\r\n")  # fmt: skip
    assert status == 413 and json.loads(reply)["error"]["code"] == "file_too_large"


async def test_uploads_beyond_the_limit_get_429_and_a_stream_goes_on_beside_them(
    nursery, tmp_path, zipformer2_model_dir, files, monkeypatch
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, max_uploads=2)
    monkeypatch.setattr(transcriptions, "PLACE_WAIT_SECONDS", 0.3)  # received uploads wait this long for a place
    release = trio.Event()
    transcribe = server.api.transcriber.transcribe

    async def held(*args: object, **kw: object) -> object:
        await release.wait()
        return await transcribe(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(server.api.transcriber, "transcribe", held)
    results: list[object] = []

    async def upload() -> None:
        try:
            results.append(await create(server, files["wav"]))
        except openai.APIStatusError as exc:
            results.append(exc.status_code)

    async with trio.open_nursery() as uploads:
        try:
            for _ in range(6):
                uploads.start_soon(upload)
            with trio.fail_after(20):
                while len(results) < 4:
                    await trio.sleep(0.05)
            assert results == [429] * 4 and server.api.active == 2
            async with trio_websocket.open_websocket_url(ws_url(server.port) + f"?token={TOKEN}") as ws:
                await ws.send_message(start_msg())
                assert (await recv_json(ws))["signal"] == "server_ready"
                await ws.send_message((np.zeros(1600, "<i2")).tobytes())
                assert "result" in await recv_json(ws)
                await ws.send_message(end_msg())
                assert (await recv_json(ws))["signal"] == "end"
        finally:
            release.set()
    assert sorted(type(r).__name__ for r in results if r != 429) == ["Transcription", "Transcription"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_uploads_flac_over_https_with_a_token(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir, files
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, cafile = tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir, certfile=certfile)
    expected = await trio.to_thread.run_sync(cli_text, "--model", str(sense_voice_dir), "--itn", str(files["wav"]))
    url = f"https://127.0.0.1:{server.port}/v1/audio/transcriptions"
    command = ["curl", "-sS", "--cacert", str(cafile), "-H", f"Authorization: Bearer {TOKEN}",
               "-F", f"file=@{files['flac']}", "-F", "model=whisper-1", url]  # fmt: skip
    done = await trio.to_thread.run_sync(lambda: subprocess.run(command, capture_output=True, timeout=60))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": expected}
    unauthorized = await trio.to_thread.run_sync(
        lambda: subprocess.run(command[:4] + command[6:] + ["-o", "/dev/null", "-w", "%{http_code}"],
                               capture_output=True, timeout=60))  # fmt: skip
    assert unauthorized.stdout == b"401"


async def test_a_hundred_uploads_at_once(nursery, tmp_path, zipformer2_model_dir, files) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, max_uploads=4)
    wav = files["wav"].read_bytes()
    body = (b"--xyz\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + wav
            + b"\r\n--xyz--\r\n")  # fmt: skip
    headers = f"content-type: multipart/form-data; boundary=xyz\r\ncontent-length: {len(body)}\r\n"
    statuses: list[int] = []

    async def upload() -> None:
        status, reply = await raw_post(server.port, body, headers)
        assert status == 429 and json.loads(reply)["error"]["code"] == "too_many_uploads" or status == 200
        statuses.append(status)

    with trio.fail_after(120):
        async with trio.open_nursery() as uploads:
            for _ in range(100):
                uploads.start_soon(upload)
    assert len(statuses) == 100 and 200 in statuses and 429 in statuses
    assert server.api.active == 0
    status, reply = await raw_post(server.port, body, headers)  # and it goes on
    assert status == 200 and json.loads(reply)["text"]


def form(wav: bytes) -> tuple[bytes, str]:
    body = (b"--xyz\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + wav
            + b"\r\n--xyz--\r\n")  # fmt: skip
    return body, f"content-type: multipart/form-data; boundary=xyz\r\ncontent-length: {len(body)}\r\n"


async def test_a_body_cut_short_gets_an_openai_error(nursery, tmp_path, zipformer2_model_dir, files) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    body, headers = form(files["wav"].read_bytes())
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n{headers}\r\n"
        await stream.send_all(head.encode() + body[:1000])
        await stream.send_eof()
        reply = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["message"]


async def test_slow_senders_hold_no_decoding_place(nursery, tmp_path, zipformer2_model_dir, files) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, max_uploads=1)
    body, headers = form(files["wav"].read_bytes())
    head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n{headers}\r\n"
    trickling: list[trio.SocketStream] = []

    async def trickle(count: int) -> None:
        for _ in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(head.encode() + body[:300])
            trickling.append(stream)
        with trio.fail_after(10):
            while server.api.receiving < len(trickling):
                await trio.sleep(0.01)

    await trickle(transcriptions.RECEIVING_PER_PLACE - 1)
    status, reply = await raw_post(server.port, body, headers)
    assert status == 200 and json.loads(reply)["text"]
    await trickle(1)  # one more: the limit
    status, reply = await raw_post(server.port, body, headers)
    assert status == 429 and json.loads(reply)["error"]["code"] == "too_many_uploads"
    for stream in trickling:
        await stream.aclose()


async def test_an_upload_not_decoded_when_the_grace_period_ends_gets_503(
    nursery, tmp_path, zipformer2_model_dir, files, monkeypatch
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, grace_period=0.3, drain_timeout=5.0)

    async def never(*args: object, **kw: object) -> object:
        await trio.sleep_forever()

    monkeypatch.setattr(server.api.transcriber, "transcribe", never)
    body, headers = form(files["wav"].read_bytes())
    answers: list[tuple[int, bytes]] = []

    async def upload() -> None:
        answers.append(await raw_post(server.port, body, headers))

    nursery.start_soon(upload)
    with trio.fail_after(10):
        while not server.api.active:
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        server.shutdown()
        while not answers:
            await trio.sleep(0.01)
    status, reply = answers[0]
    assert status == 503 and json.loads(reply)["error"]["code"] == "shutting_down"
