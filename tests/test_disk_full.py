"""A full disk under the audio directory (issue "Hardening II", items 2 and 8).

The disk is simulated by monkeypatching, each test saying where: a file
object that takes bytes only up to a given size (a short write, then
ENOSPC, as the kernel does), or writes that fail outright.  Each test failed
before its fix.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio_websocket
from serverutil import http_get, recv_json, replies_until_close, start_msg, start_server, ws_url

from trio_asr import audio as audio_module
from trio_asr.protocol.messages import StartStream
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.serving import recording as recording_module
from trio_asr.serving.recording import SAVE_EVERY_BYTES, AudioSaveError, AudioStore

RNG = np.random.default_rng(7)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class SmallDisk:
    """Room for ``room`` bytes of each file opened through :meth:`wrap`: a
    write that would go past it writes what fits (a short write), the next
    one fails with ENOSPC.  Overwriting and truncating always work."""

    def __init__(self, room: int) -> None:
        self.room = room

    def wrap(self, file: Any) -> io.BufferedWriter:
        """``file``'s descriptor behind the same kind of object ``os.fdopen(fd, "wb")`` gives."""
        disk = self

        class OnSmallDisk(io.FileIO):
            def write(self, data: Any) -> int:
                view = memoryview(data)
                fits = disk.room - self.tell()
                if len(view) > fits:
                    if fits <= 0:
                        raise enospc()
                    view = view[:fits]
                return super().write(view)

        fd = os.dup(file.fileno())
        file.close()
        return io.BufferedWriter(OnSmallDisk(fd, "w"))


def on_small_disk(monkeypatch: pytest.MonkeyPatch, disk: SmallDisk) -> None:
    """Recordings' files are opened on ``disk``."""
    create = recording_module.create_unique_wav

    def create_on_disk(directory: Any, name: object) -> tuple[Path, Any]:
        path, file = create(directory, name)
        return path, disk.wrap(file)

    monkeypatch.setattr(recording_module, "create_unique_wav", create_on_disk)


def check_wav(path: Path, channels: int) -> bytes:
    """The file parses with :mod:`wave` and its header sizes are exactly its
    data; returns the data."""
    raw = path.read_bytes()
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (channels, 2)
        frames = wav.readframes(wav.getnframes() + 1000)
        assert len(frames) == wav.getnframes() * 2 * channels
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8, "RIFF size"
    assert raw[36:40] == b"data" and struct.unpack_from("<I", raw, 40)[0] == len(raw) - 44, "data size"
    assert frames == raw[44:]
    return frames


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("freed", [False, True], ids=["still-full", "freed"])
def test_a_write_cut_short_by_a_full_disk_leaves_a_wav_whose_header_matches_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channels: int, freed: bool
) -> None:
    # room for the header, one whole piece and 1001 bytes of the next (not a
    # whole number of frames): the second piece is cut by a short write
    disk = SmallDisk(room=44 + SAVE_EVERY_BYTES + 1001)
    on_small_disk(monkeypatch, disk)
    store = AudioStore(tmp_path)
    start = StartStream("cut.wav", channels, 16, StreamOptions(nbest=1, sample_rate=16000))
    recording = store.open(start)
    assert recording is not None
    sent = RNG.integers(-20000, 20000, size=SAVE_EVERY_BYTES, dtype="<i2").tobytes()  # two pieces
    assert recording.append(sent[:SAVE_EVERY_BYTES])
    recording.write_pending()
    assert recording.append(sent[SAVE_EVERY_BYTES:])
    with pytest.raises(AudioSaveError, match="No space left"):
        recording.write_pending()
    assert store.failure == "No space left on device"

    saved = check_wav(recording.path, channels)
    block = 2 * channels
    assert len(saved) == SAVE_EVERY_BYTES + 1001 - 1001 % block, "every whole frame that reached the disk is kept"
    assert saved == sent[: len(saved)]

    if freed:
        disk.room = 1 << 30
        recording.close()  # writes what did not fit
        assert check_wav(recording.path, channels) == sent, "nothing is lost once there is room"
        assert store.failure is None
    else:
        with pytest.raises(AudioSaveError, match="No space left"):
            recording.close()
        assert check_wav(recording.path, channels) == saved


def test_a_write_that_fails_before_any_byte_keeps_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = SmallDisk(room=44 + 1000)
    on_small_disk(monkeypatch, disk)
    store = AudioStore(tmp_path)
    recording = store.open(StartStream("full.wav", 1, 16, StreamOptions(nbest=1, sample_rate=16000)))
    assert recording is not None
    sent = RNG.integers(-20000, 20000, size=1500, dtype="<i2").tobytes()
    recording.append(sent[:1000])
    recording.write_pending()
    recording.append(sent[1000:])
    with pytest.raises(AudioSaveError):
        recording.write_pending()
    assert check_wav(recording.path, 1) == sent[:1000]
    disk.room = 1 << 30
    recording.close()
    assert check_wav(recording.path, 1) == sent


def test_a_disk_without_room_for_the_header_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_small_disk(monkeypatch, SmallDisk(room=20))
    store = AudioStore(tmp_path)
    with pytest.raises(AudioSaveError, match="No space left"):
        store.open(StartStream("none.wav", 1, 16, StreamOptions(nbest=1, sample_rate=16000)))
    assert list(tmp_path.iterdir()) == [], "no file that is not a WAV"
    assert store.failure == "No space left on device"


# ------------------------------------------------------------ /health recovers


class OsOnFullDisk:
    """``os`` for :mod:`trio_asr.serving.recording`, whose writes fail while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.writes += 1
        if self.full:
            raise enospc()
        return os.write(fd, data)


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(port, "/health")
    return status, json.loads(body)


async def test_health_recovers_by_itself_once_the_disk_has_room_again(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(recording_module, "PROBE_EVERY_SECONDS", 0.05)
    disk = OsOnFullDisk()
    monkeypatch.setattr(recording_module, "os", disk)  # the probe's writes
    real_write = audio_module.WavWriter.write

    def write_on_full_disk(self: Any, pcm: bytes) -> None:
        if disk.full:
            raise enospc()
        real_write(self, pcm)

    monkeypatch.setattr(audio_module.WavWriter, "write", write_on_full_disk)  # the streams' writes
    server = await start_server(nursery, tmp_path)
    await trio.sleep(0.3)
    assert disk.writes == 0, "nothing is probed while saving works"

    disk.full = True
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("victim.wav"))
        await recv_json(ws)
        await ws.send_message(RNG.integers(-20000, 20000, size=20000, dtype=np.int16).tobytes())  # a write is due
        replies, code = await replies_until_close(ws)
    assert code == 1011 and "No space left" in replies[-1]["message"]
    status, body = await health(server.port)
    assert status == 503 and body["status"] == "cannot save audio" and "No space left" in body["error"]
    await trio.sleep(0.3)  # several probes, all failing
    assert disk.writes >= 2
    assert (await health(server.port))[0] == 503, "a probe that fails does not clear the failure"

    disk.full = False  # space freed; no stream comes
    with trio.fail_after(5):
        while (await health(server.port))[0] != 200:
            await trio.sleep(0.02)
    assert (await health(server.port))[1]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["victim.wav"], "no probe file is left"
    writes = disk.writes
    await trio.sleep(0.3)
    assert disk.writes == writes, "probing stops once saving works"

    failed = [r for r in caplog.records if "cannot save audio" in r.getMessage()]
    assert len(failed) == 1, "one line for the stream's failure (not another for its retry at close)"
    recovered = [r for r in caplog.records if "works again" in r.getMessage()]
    assert [r.levelno for r in recovered] == [logging.WARNING], "one line when it recovers"
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2, "no line per failed probe"
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"
