"""FLAC, Ogg and MP3 input for ``transcribe`` and ``client`` (through soundfile),
the one-line refusal when it cannot be read, and files at rates the server
does not take (Hardening II, item 13).

The compressed files are written at test time from a speech clip with
soundfile, in every format the installed libsndfile can write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
from paths import SPEECH_FILES
from serverutil import ws_url

from trio_asr.audio import WavWriter, pcm16_to_float, read_wav
from trio_asr.audio_files import AudioFileError, UnsupportedAudioFormat, decode_audio, detect_format, read_audio
from trio_asr.cli.client import _to_pcm16, fit_to_server
from trio_asr.cli.commands import main
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.resample import resample
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.server import serve

soundfile = pytest.importorskip("soundfile", reason="soundfile is in the test extra: pip install -e '.[test]'")

CLIP = SPEECH_FILES[1] if len(SPEECH_FILES) > 1 else SPEECH_FILES[0]
#: (format, subtype, suffix, lossless)
ENCODINGS = [
    ("FLAC", "PCM_16", ".flac", True),
    ("OGG", "VORBIS", ".ogg", False),
    ("OGG", "OPUS", ".opus", False),
    ("MP3", "MPEG_LAYER_III", ".mp3", False),
]


def writable(fmt: str, subtype: str) -> str | None:
    """Why the installed libsndfile cannot write ``fmt``/``subtype``, or None."""
    if fmt not in soundfile.available_formats() or subtype not in soundfile.available_subtypes(fmt):
        version = soundfile.__libsndfile_version__
        needs = " (MP3 needs libsndfile >= 1.1)" if fmt == "MP3" else ""
        return f"libsndfile {version} cannot write {fmt}/{subtype}{needs}"
    return None


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict[str, Path]:
    """The clip in every format of ENCODINGS that can be written, by suffix."""
    samples, rate = read_wav(CLIP)
    out = tmp_path_factory.mktemp("formats")
    files = {}
    for fmt, subtype, suffix, _ in ENCODINGS:
        if writable(fmt, subtype) is None:
            path = out / (CLIP.stem + suffix)
            soundfile.write(path, samples, rate, format=fmt, subtype=subtype)
            files[suffix] = path
    return files


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory) -> Recognizer:
    from trio_asr.testing import zipformer2_ctc

    return Recognizer(load_model(zipformer2_ctc.write_model(tmp_path_factory.mktemp("model"))))


@pytest.mark.parametrize(("fmt", "subtype", "suffix", "lossless"), ENCODINGS, ids=[e[2] for e in ENCODINGS])
def test_transcribe_reads_the_format(encoded, zipformer2_model_dir, recognizer, capsys, fmt, subtype, suffix, lossless):
    why = writable(fmt, subtype)
    if why:
        pytest.skip(why)
    path = encoded[suffix]
    assert main(["transcribe", "--model", str(zipformer2_model_dir), "--json", str(CLIP), str(path)]) == 0
    wav_record, record = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert wav_record["text"]
    if lossless:
        assert record["text"] == wav_record["text"]
        return
    # Lossy: the decoded audio is the clip's, aligned; the text is what that audio gives (the
    # fixture model's random weights turn coding noise into other tokens, a real model would not).
    decoded, rate = soundfile.read(path, dtype="float32", always_2d=True)
    original, wav_rate = read_wav(CLIP)
    assert rate == wav_rate and abs(len(decoded) - len(original)) <= rate // 100
    n = min(len(decoded), len(original))
    assert np.corrcoef(decoded[:n, 0], original[:n, 0])[0, 1] > 0.98
    assert record["text"] == transcribe_samples(recognizer, decoded, rate).text


def test_every_format_is_read_as_its_samples(encoded):
    for suffix, path in encoded.items():
        samples, rate = read_audio(path)
        expected, expected_rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert rate == expected_rate and samples.dtype == np.float32
        np.testing.assert_array_equal(samples, expected, err_msg=suffix)


def test_wav_stays_on_the_fast_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile fails
    samples, rate = read_audio(CLIP)
    expected, expected_rate = read_wav(CLIP)
    assert rate == expected_rate
    np.testing.assert_array_equal(samples, expected)


def test_a_compressed_wav_that_read_wav_refuses_goes_to_soundfile(tmp_path):
    samples, rate = read_wav(CLIP)
    path = tmp_path / "alaw.wav"
    soundfile.write(path, samples, rate, format="WAV", subtype="ALAW")
    with pytest.raises(ValueError, match="format tag"):
        read_wav(path)
    decoded, decoded_rate = read_audio(path)
    assert decoded_rate == rate and np.corrcoef(decoded[:, 0], samples[:, 0])[0, 1] > 0.99


@pytest.mark.parametrize("command", ["transcribe", "client"])
def test_without_soundfile_the_refusal_names_the_format_and_the_conversion(
    encoded, zipformer2_model_dir, monkeypatch, capsys, command
):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    path = encoded[".flac"]
    model = ["--model", str(zipformer2_model_dir)] if command == "transcribe" else []
    assert main([command, *model, str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trio-asr {command}: {path}: FLAC audio needs the soundfile package")
    assert "trio-asr[formats]" in lines[0]
    assert lines[0].endswith(f"convert it: ffmpeg -i {path} -ar 16000 -ac 1 {path.with_suffix('.wav')})")


def test_an_unknown_format_is_one_line_with_the_conversion(tmp_path, zipformer2_model_dir, capsys):
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    assert detect_format(path.read_bytes()[:16]) == "MP4/M4A"
    assert main(["transcribe", "--model", str(zipformer2_model_dir), str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trio-asr transcribe: {path}: cannot decode it as MP4/M4A: ")
    assert lines[0].endswith(f"(convert it: ffmpeg -i {path} -ar 16000 -ac 1 {tmp_path / 'voice.wav'})")
    with pytest.raises(AudioFileError, match=r"^.*mystery\.bin: not an audio format trio-asr can read"):
        (tmp_path / "mystery.bin").write_bytes(bytes(100))
        read_audio(tmp_path / "mystery.bin")


def test_more_channels_than_the_server_takes_are_mixed_down():
    samples = np.tile(np.linspace(-0.5, 0.5, 1600, dtype=np.float32)[:, None], (1, 10))
    fitted, rate = fit_to_server(samples, 16000)
    assert rate == 16000 and fitted.shape == (1600, 1)
    np.testing.assert_allclose(fitted[:, 0], samples[:, 0], atol=1e-6)
    stereo = samples[:, :2]
    assert fit_to_server(stereo, 44100) == (stereo, 44100)  # a rate and channels the server takes: as they are


async def test_client_streams_192khz_and_compressed_files(nursery, tmp_path, recognizer, encoded, capsys):
    """192 kHz is no rate the server takes: the client resamples to 16 kHz
    first and gets the text of what it sent; a FLAC file streams like its WAV."""
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", save_audio=False)
    server = await nursery.start(serve, config, recognizer)
    samples, rate = read_wav(CLIP)
    high = tmp_path / "high.wav"
    with WavWriter(high, 192000, 1) as wav:
        wav.write(_to_pcm16(resample(samples[:, 0], rate, 192000)))
    args = ["client", "--url", ws_url(server.port), str(high), str(CLIP), str(encoded[".flac"])]
    assert await trio.to_thread.run_sync(main, args) == 0
    texts = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
    sent, sent_rate = fit_to_server(*read_audio(high))
    assert sent_rate == 16000
    assert texts[0] == transcribe_samples(recognizer, pcm16_to_float(_to_pcm16(sent)), sent_rate).text
    assert texts[0] and texts[1] and texts[2] == texts[1]


# ------------------------------------------------------------ decode_audio: uploads in memory

WAV_SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"]


@pytest.mark.parametrize("subtype", WAV_SUBTYPES)
def test_wav_bytes_decode_as_read_wav_reads_the_file(tmp_path, monkeypatch, subtype):
    samples, rate = read_wav(CLIP)
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, np.repeat(samples, 2, axis=1) * [1.0, -0.5], rate, subtype=subtype)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # the fast path needs no soundfile
    for data in (path.read_bytes(), bytearray(path.read_bytes()), memoryview(path.read_bytes())):
        decoded, decoded_rate = decode_audio(data)
        expected, expected_rate = read_wav(path)
        assert decoded_rate == expected_rate == rate and decoded.dtype == np.float32 and decoded.shape[1] == 2
        np.testing.assert_array_equal(decoded, expected)


def test_compressed_bytes_decode_as_read_audio_reads_the_file(encoded, tmp_path):
    alaw = tmp_path / "alaw.wav"
    soundfile.write(alaw, *read_wav(CLIP), format="WAV", subtype="ALAW")  # read_wav refuses it
    for path in [*encoded.values(), alaw]:
        decoded, rate = decode_audio(path.read_bytes(), path.name)
        expected, expected_rate = read_audio(path)
        assert rate == expected_rate and decoded.dtype == np.float32 and decoded.flags.c_contiguous
        if path.suffix in (".flac", ".wav"):
            np.testing.assert_array_equal(decoded, expected, err_msg=path.name)
        else:  # soundfile.read seeks to the start first, which moves the MP3 decoder's rounding by an ulp
            np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-6, err_msg=path.name)


def refusal(data: bytes, kind: type[AudioFileError], name: str = "voice.bin") -> str:
    """The one-line message of decode_audio's refusal of ``data``, which must be a ``kind`` exactly."""
    with pytest.raises(AudioFileError) as info:
        decode_audio(data, name)
    assert type(info.value) is kind, str(info.value)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: "), message
    return message


def test_broken_uploads_are_refused_in_one_line(encoded):
    wav = CLIP.read_bytes()
    assert refusal(b"", AudioFileError) == "voice.bin: empty file (0 bytes)"
    assert "cannot decode it as WAV: truncated fmt chunk" in refusal(wav[:20], AudioFileError)
    assert "cannot decode it as WAV: not a RIFF/WAVE file" in refusal(b"RIFF", AudioFileError)
    assert "cannot decode it as WAV" in refusal(wav[:12] + b"LIST" + b"\xff\xff\xff\x7f" + bytes(64), AudioFileError)
    flac = encoded[".flac"].read_bytes()
    assert "cannot decode it as FLAC: " in refusal(flac[:4] + bytes(len(flac) - 4), AudioFileError)


def test_bytes_in_no_audio_format_are_unsupported():
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    noise = b"\x00" + noise[1:]  # not by chance an MPEG frame header
    text = "Meeting notes\n\nnothing to hear here.\n".encode() * 20
    for data in (noise, text, b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(100)):
        message = refusal(data, UnsupportedAudioFormat)
        assert "not an audio format trio-asr can read (it reads WAV, FLAC, Ogg" in message
    m4a = b"\x00\x00\x00\x20ftypM4A " + bytes(200)
    message = refusal(m4a, UnsupportedAudioFormat, "a.m4a")
    assert message == "a.m4a: MP4/M4A audio cannot be decoded here (send WAV or FLAC)"


def test_without_soundfile_only_wav_is_decoded(encoded, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)
    flac = encoded[".flac"].read_bytes()
    message = refusal(flac, UnsupportedAudioFormat, "talk.flac")
    assert message.startswith("talk.flac: FLAC audio needs the soundfile package") and "trio-asr[formats]" in message
    message = refusal(b"plain text", UnsupportedAudioFormat)
    assert message.endswith("not an audio format trio-asr can read (it reads WAV)")
    assert "truncated fmt chunk" in refusal(CLIP.read_bytes()[:20], AudioFileError)
    assert len(decode_audio(CLIP.read_bytes())[0])


def test_a_wav_header_alone_is_no_audio():
    samples, rate = decode_audio(CLIP.read_bytes()[:44])
    assert samples.shape == (0, 1) and rate == read_wav(CLIP)[1]


def test_audio_longer_than_allowed_is_refused_without_decoding_it_all(encoded, monkeypatch):
    samples, rate = read_wav(CLIP)
    seconds = len(samples) / rate
    for data in (CLIP.read_bytes(), encoded[".flac"].read_bytes()):
        assert len(decode_audio(data, max_seconds=seconds)[0]) == len(samples)
        with pytest.raises(AudioFileError, match=r"^upload: (WAV|FLAC) is longer than the 0\.5 s allowed$"):
            decode_audio(data, max_seconds=0.5)
    asked = []
    real_read = soundfile.SoundFile.read
    monkeypatch.setattr(
        soundfile.SoundFile, "read", lambda self, **kw: asked.append(kw["frames"]) or real_read(self, **kw)
    )
    with pytest.raises(AudioFileError):
        decode_audio(encoded[".flac"].read_bytes(), max_seconds=0.5)
    assert asked == [rate // 2 + 1]


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_audio_mono_is_the_down_mix_a_block_at_a_time(fmt, monkeypatch) -> None:
    import io

    import soundfile

    from trio_asr import audio_files
    from trio_asr.audio import down_mix
    from trio_asr.audio_files import decode_audio

    monkeypatch.setattr(audio_files, "_BLOCK_FRAMES", 1000)  # several blocks
    rng = np.random.default_rng(1)
    stereo = (0.3 * rng.standard_normal((4567, 3))).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, stereo, 22050, format=fmt, subtype="PCM_16")
    whole, rate = decode_audio(out.getvalue())
    mono, mono_rate = decode_audio(out.getvalue(), mono=True)
    assert (rate, mono_rate, whole.shape, mono.shape) == (22050, 22050, (4567, 3), (4567,))
    np.testing.assert_array_equal(mono, down_mix(whole))
    with pytest.raises(audio_files.AudioTooLong):
        decode_audio(out.getvalue(), mono=True, max_seconds=0.1)
