"""Ctrl-C: every command stops with one line, ``trio-asr COMMAND: interrupted``,
and exit status 130, never a traceback (Hardening II, item 10).

Each command runs as a real process and gets SIGINT once it is busy:
``transcribe`` in the middle of a long file, ``client`` (lock-step and
``--pipeline``) in the middle of a stream to a test server, ``serve`` while
its model loads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import trio
from paths import SPEECH_FILES
from serverutil import ws_url

from trio_asr.audio import WavWriter, read_wav
from trio_asr.cli.commands import INTERRUPTED, is_interrupt
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.server import serve

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")

#: ``serve`` with its model load slowed down: it says "loading" and then
#: sleeps (interruptibly, as a long load is) before loading the model
SLOW_LOADING = """
import sys, time
import trio_asr.recognition.model as model
real_load = model.load_model
def slow_load(*args, **kwargs):
    print("loading", flush=True)
    time.sleep(60)
    return real_load(*args, **kwargs)
model.load_model = slow_load
from trio_asr.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """Ten minutes of the speech clips, one after another: more than any
    command gets through before it is interrupted."""
    clips = [read_wav(path)[0][:, 0] for path in SPEECH_FILES]
    one_round = np.concatenate(clips)
    samples = np.tile(one_round, -(-600 * 16000 // one_round.size))
    path = tmp_path_factory.mktemp("long") / "long.wav"
    with WavWriter(path, 16000, 1) as wav:
        wav.write(np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes())
    return path


def start(*args: str, code: str | None = None) -> subprocess.Popen[str]:
    prefix = ["-c", code] if code else ["-m", "trio_asr"]
    proc = subprocess.Popen(
        [sys.executable, *prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.daemon = True
    watchdog.start()
    return proc


def interrupt(proc: subprocess.Popen[str], command: str) -> None:
    """SIGINT, then: exit status 130 and one line on stderr."""
    assert proc.poll() is None, "the command ended before it was interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"trio-asr {command}: interrupted"], err
    assert proc.returncode == INTERRUPTED == 130


def test_transcribe_interrupted_in_a_long_file(zipformer2_model_dir, long_wav):
    short = str(SPEECH_FILES[0])
    proc = start("transcribe", "--model", str(zipformer2_model_dir), short, str(long_wav))
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(short + "\t")  # the first file is done: the long one is under way
    interrupt(proc, "transcribe")


@pytest.mark.parametrize("mode", [[], ["--pipeline"]], ids=["lock-step", "pipeline"])
async def test_client_interrupted_while_streaming(nursery, tmp_path, zipformer2_model_dir, long_wav, mode):
    recognizer = Recognizer(load_model(zipformer2_model_dir))
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", save_audio=False)
    server = await nursery.start(serve, config, recognizer)
    proc = start("client", "--url", ws_url(server.port), *mode, str(long_wav))
    with trio.fail_after(60):
        while not server.connections:  # streaming
            assert proc.poll() is None, proc.communicate()
            await trio.sleep(0.05)
    await trio.sleep(0.3)
    await trio.to_thread.run_sync(interrupt, proc, "client")


def test_serve_interrupted_while_its_model_loads(zipformer2_model_dir, tmp_path):
    proc = start("serve", "--host", "127.0.0.1", "--port", "0", "--model", str(zipformer2_model_dir),
                 "--audio-dir", str(tmp_path / "audio"), code=SLOW_LOADING)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "loading\n"
    interrupt(proc, "serve")


# ------------------------------------------------------------ what counts as Ctrl-C


async def _interrupted_nursery(also: BaseException | None = None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        if also is not None:
            nursery.start_soon(_raise, also)
            await trio.sleep(0)
        raise KeyboardInterrupt


async def _raise(exc: BaseException) -> None:
    raise exc


def test_a_keyboard_interrupt_from_a_nursery_is_an_interrupt():
    with pytest.raises(BaseException) as info:
        trio.run(_interrupted_nursery)
    assert not isinstance(info.value, KeyboardInterrupt)  # a group, with the cancelled task's Cancelled
    assert is_interrupt(info.value)
    assert is_interrupt(KeyboardInterrupt())


def test_a_group_with_a_real_error_is_not_an_interrupt():
    with pytest.raises(BaseException) as info:
        trio.run(_interrupted_nursery, RuntimeError("boom"))
    assert not is_interrupt(info.value)
    assert not is_interrupt(RuntimeError("boom"))
