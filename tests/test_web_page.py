"""The microphone page (trio_asr/serving/web) in a real headless Chromium.

The server runs the fixture model and serves the page at ``GET /``; the page
talks to it exactly as a user's browser would (also over https/wss with an
access token).  The microphone is Chromium's fake capture device playing a
speech WAV; a screenshot of each run is saved under the test's tmp dir (its
path is printed; ``pytest -s`` shows it).

Skipped, saying so, where no Chromium is installed (``.ci/run`` installs
Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from scipy.signal import correlate, resample_poly

from browser import Browser, find_chromium
from paths import AUDIO_DIR
from trio_asr.audio import read_wav
from webserver import serve_in_thread

SPEECH = AUDIO_DIR / "english.wav"
FAKE_MIC_RATE = 44100  # headless Chromium's AudioContext rate without a sound card


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium): the browser tests need it")
    return path


@pytest.fixture
def asr_server(zipformer2_model_dir, tmp_path):
    with serve_in_thread(zipformer2_model_dir, audio_dir=tmp_path / "audio") as server:
        yield server


def transcribe(model_dir: Path, wav: Path) -> str:
    """What ``trio-asr transcribe`` prints for ``wav``."""
    proc = subprocess.run(
        [sys.executable, "-m", "trio_asr", "transcribe", "--model", str(model_dir), "--json", str(wav)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["text"]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def saved_wavs(server) -> list[Path]:
    return sorted(server.audio_dir.glob("*.wav"))


def finish(browser: Browser, tmp_path: Path, name: str) -> dict:
    browser.wait_for("['done', 'error'].includes(document.body.dataset.state)", timeout=60)
    shot = browser.screenshot(tmp_path / f"{name}.png")
    print(f"screenshot: {shot}")
    return browser.page_summary()


def test_microphone_streams_to_the_server_and_shows_its_final_text(
    chromium, asr_server, zipformer2_model_dir, tmp_path
):
    """Fake microphone -> AudioWorklet -> PCM16 at the context's rate -> server.

    The browser starts playing the fake microphone's WAV when capture begins,
    and its first few milliseconds are faded in, so the audio that arrives is
    the WAV plus leading silence, not the WAV's exact bytes.  Hence: the page's
    final text must equal ``trio-asr transcribe`` of the audio the server
    received (its saved WAV), and that audio must be the microphone's WAV
    (same rate, aligned samples almost all identical).
    """
    speech, rate = read_wav(SPEECH)
    mic_wav = write_wav(tmp_path / "mic.wav", resample_poly(speech[:, 0], FAKE_MIC_RATE, rate), FAKE_MIC_RATE)
    mic, _ = read_wav(mic_wav)
    mic = mic[:, 0]
    # Chromium's fake capture device now and then drops or repeats 10 ms
    # buffers when its audio thread is starved (about one run in six on 2
    # busy cores: a stretch of the received audio matches no part of the
    # WAV).  That is the browser's input, not the page, so a second capture
    # is allowed; a page that mangles audio fails both.
    correlations = []
    for attempt in range(2):
        aligned, expected = capture_microphone(
            chromium, asr_server, zipformer2_model_dir, mic_wav, mic, tmp_path / f"attempt{attempt}"
        )
        correlations.append(float(np.corrcoef(aligned, expected)[0, 1]))
        if correlations[-1] > 0.98:
            break
    assert max(correlations) > 0.98, correlations
    if expected is mic:  # not resampled: the context ran at the WAV's rate
        assert np.mean(aligned == mic) > 0.9  # bit-exact apart from the fade-in


def capture_microphone(
    chromium: str, asr_server, model_dir: Path, mic_wav: Path, mic: np.ndarray, tmp_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Stream the fake microphone from the page until stopped, check the
    page's state and final text, and return the part of what the server
    saved that aligns with the WAV, and the WAV at the rate received."""
    tmp_path.mkdir()
    before = set(saved_wavs(asr_server))
    with Browser(chromium, fake_audio=mic_wav) as browser:
        browser.navigate(asr_server.page_url)
        browser.evaluate("document.getElementById('mic-start').click()")
        browser.wait_for("document.body.dataset.state === 'streaming'", timeout=30)
        # Partial results appear while the microphone is on.
        browser.wait_for("document.getElementById('partial').textContent.length > 0", timeout=30)
        time.sleep(len(mic) / FAKE_MIC_RATE + 0.5)
        browser.evaluate("document.getElementById('stop').click()")
        page = finish(browser, tmp_path, "microphone")
        context_rate = browser.evaluate("new AudioContext().sampleRate")
    assert page["state"] == "done", page
    assert page["error"] == ""
    [saved] = set(saved_wavs(asr_server)) - before
    received, received_rate = read_wav(saved)
    assert received_rate == context_rate  # the page announced its native rate
    assert page["final"] == transcribe(model_dir, saved)
    assert page["final"]

    received = received[:, 0]
    expected = mic if received_rate == FAKE_MIC_RATE else resample_poly(mic, received_rate, FAKE_MIC_RATE)
    assert len(received) >= len(expected)
    lag = int(np.argmax(correlate(received, expected, mode="valid")))
    return received[lag : lag + len(expected)], expected


def test_file_streams_at_real_time_pace_with_the_same_text_as_transcribe(
    chromium, asr_server, zipformer2_model_dir, tmp_path
):
    expected = transcribe(zipformer2_model_dir, SPEECH)
    duration = wave.open(str(SPEECH)).getnframes() / 16000
    with Browser(chromium) as browser:
        browser.navigate(asr_server.page_url)
        browser.set_file("#file", SPEECH)
        started = time.monotonic()
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "file")
        elapsed = time.monotonic() - started
        frames = browser.evaluate("document.getElementById('status').textContent")
    assert page["state"] == "done", page
    assert page["final"] == expected
    assert expected
    assert elapsed >= 0.8 * duration  # paced, not sent all at once
    assert f"{int(np.ceil(duration / 0.1))} audio frames sent" in frames
    # The server received exactly the file's samples, at its rate.
    [saved] = saved_wavs(asr_server)
    received, received_rate = read_wav(saved)
    original, original_rate = read_wav(SPEECH)
    assert received_rate == original_rate
    np.testing.assert_array_equal(received, original)


def test_nbest_toggle_shows_the_hypotheses(chromium, asr_server, tmp_path):
    with Browser(chromium) as browser:
        browser.navigate(asr_server.page_url)
        browser.evaluate("document.getElementById('nbest-toggle').click()")
        browser.set_file("#file", SPEECH)
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "nbest")
        hypotheses = browser.evaluate(
            "[...document.querySelectorAll('#nbest-list li')].map(li => li.firstChild.textContent)"
        )
        hidden = browser.evaluate("document.getElementById('nbest-box').hidden")
    assert page["state"] == "done", page
    assert not hidden
    assert 1 < len(hypotheses) <= 5
    assert hypotheses[0] == page["final"]
    assert len(set(hypotheses)) == len(hypotheses)


def test_an_unreachable_server_is_a_visible_error(chromium, asr_server, tmp_path):
    with Browser(chromium) as browser:
        browser.navigate(asr_server.page_url)
        browser.evaluate(
            "document.getElementById('server').value = "
            f"'ws://127.0.0.1:{asr_server.port}/no/such/path'"
        )
        browser.set_file("#file", SPEECH)
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "error")
    assert page["state"] == "error"
    assert "code 1006" in page["error"]
    assert "check the URL" in page["error"]
    assert saved_wavs(asr_server) == []


def test_https_page_with_an_access_token(chromium, zipformer2_model_dir, tmp_path):
    """The page served over https talks wss:// to its server and sends the
    token from its field as the ``token`` query parameter; without it the
    server refuses the upgrade (401) and the page says what to check."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    # Chromium trusts exactly this certificate's key (by SPKI hash), nothing else.
    public_key = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    expected = transcribe(zipformer2_model_dir, SPEECH)
    settings = dict(certfile=certfile, keyfile=keyfile, auth_token=("browser-token-42",))
    with serve_in_thread(zipformer2_model_dir, audio_dir=tmp_path / "audio", **settings) as server, \
            Browser(chromium, extra_args=(f"--ignore-certificate-errors-spki-list={pin}",)) as browser:
        assert server.page_url.startswith("https://")
        browser.navigate(server.page_url)
        assert browser.evaluate("document.getElementById('server').value") == (
            f"wss://127.0.0.1:{server.port}/paddlespeech/asr/streaming"
        )
        browser.set_file("#file", SPEECH)
        browser.evaluate("document.getElementById('file-start').click()")
        refused = finish(browser, tmp_path, "https-no-token")
        assert refused["state"] == "error" and "access token" in refused["error"]

        browser.evaluate("document.getElementById('token').value = 'browser-token-42'")
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "https-token")
    assert page["state"] == "done", page
    assert page["error"] == ""
    assert page["final"] == expected
    assert len(saved_wavs(server)) == 1


def test_finalised_segments_are_rendered_once_each(chromium, asr_server):
    """Replies of a server that segments streams (additive ``segments``
    field) show each closed segment once; plain replies show none."""
    with Browser(chromium) as browser:
        browser.navigate(asr_server.page_url)
        browser.evaluate("ui.partial({result: 'a'})")
        assert browser.evaluate("document.querySelectorAll('#segments li').length") == 0
        browser.evaluate(
            "ui.partial({result: 'hello wor', segment: 1,"
            " segments: [{segment: 0, result: 'hello', bg: 0, ed: 1.25, times: []}]})"
        )
        browser.evaluate(
            "ui.final({name: 'x', signal: 'end', result: 'hello world', segment: 2,"
            " segments: [{segment: 1, result: 'world', bg: 1.25, ed: 2}, {segment: 0, result: 'hello', bg: 0, ed: 1.25}]})"
        )
        items = browser.evaluate("[...document.querySelectorAll('#segments li')].map(li => li.textContent)")
        final = browser.evaluate("document.getElementById('final').textContent")
    assert items == ["[0.00–1.25 s] hello", "[1.25–2.00 s] world"]
    assert final == "hello world"


def test_server_errors_and_close_codes_are_shown(chromium, zipformer2_model_dir, tmp_path):
    """A stream over the server's length limit: the page shows the error
    reply and the close code with its meaning and reason."""
    with serve_in_thread(zipformer2_model_dir, audio_dir=tmp_path / "audio", max_stream_seconds=0.5) as server, \
            Browser(chromium) as browser:
        browser.navigate(server.page_url)
        browser.set_file("#file", SPEECH)
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "close-code")
    assert page["state"] == "error"
    lines = page["error"].splitlines()
    assert lines[0] == "server error: stream longer than the limit of 0.5 s"
    assert lines[1].startswith("connection closed, code 1008 (protocol violation or idle): stream longer")
    assert len(saved_wavs(server)) == 1  # what was received is still saved


#: a name that is not localhost, mapped to loopback inside Chromium only: a
#: page at http://INSECURE_HOST:PORT/ reaches the test's server but is not a
#: secure context, as a page at http://0.0.0.0 or another machine's address is
INSECURE_HOST = "trio-asr-page.test"


def test_an_insecure_page_says_why_the_microphone_is_unavailable(chromium, asr_server, tmp_path):
    """Over plain http from a name other than localhost the browser offers
    no microphone (and no AudioWorklet): the page says so and what to do,
    instead of throwing; streaming a file still works."""
    with Browser(chromium, extra_args=(f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",)) as browser:
        browser.navigate(f"http://{INSECURE_HOST}:{asr_server.port}/")
        assert browser.evaluate("window.isSecureContext") is False
        browser.evaluate("document.getElementById('mic-start').click()")
        page = finish(browser, tmp_path, "insecure-microphone")
        error = page["error"]
        assert page["state"] == "error"
        assert "addModule" not in error and "undefined" not in error
        assert error.startswith("The microphone is unavailable: browsers allow it only on https:// pages or on localhost")
        assert f"open http://localhost:{asr_server.port}/" in error and "--certfile" in error
        assert page["status"] == "Microphone unavailable."
        assert not [m for m in browser.console_messages() if "Error" in m]
        # said on the page before anyone clicks, too
        assert browser.evaluate("document.getElementById('mic-note').textContent") == error
        assert browser.evaluate("document.getElementById('mic-note').hidden") is False

        browser.set_file("#file", SPEECH)
        browser.evaluate("document.getElementById('file-start').click()")
        page = finish(browser, tmp_path, "insecure-file")
        assert page["state"] == "done", page
        assert page["final"] and page["error"] == ""

        browser.navigate(asr_server.page_url)  # on localhost: a secure context, no note
        assert browser.evaluate("window.isSecureContext") is True
        assert browser.evaluate("document.getElementById('mic-note').hidden") is True


def test_a_browser_without_getusermedia_is_told_so(chromium, asr_server, tmp_path):
    """A secure page in a browser lacking navigator.mediaDevices (simulated)."""
    with Browser(chromium) as browser:
        browser.call(
            "Page.addScriptToEvaluateOnNewDocument", session=True,
            source="Object.defineProperty(Navigator.prototype, 'mediaDevices', {get: () => undefined})",
        )  # fmt: skip
        browser.navigate(asr_server.page_url)
        assert browser.evaluate("window.isSecureContext") is True
        browser.evaluate("document.getElementById('mic-start').click()")
        page = finish(browser, tmp_path, "no-getusermedia")
    assert page["state"] == "error"
    assert page["error"].startswith("The microphone is unavailable: this browser lacks navigator.mediaDevices.getUserMedia.")
    assert saved_wavs(asr_server) == []
