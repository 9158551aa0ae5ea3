"""Tests for trio_asr.audio: WAV reading/writing, PCM helpers, safe names."""

from __future__ import annotations

import os
import struct
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from paths import SPEECH_FILES
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr import audio
from trio_asr.audio import (
    MAX_NAME_BYTES,
    WavWriter,
    create_unique_wav,
    down_mix,
    parse_wav,
    pcm16_to_float,
    read_wav,
    safe_wav_name,
)

SPEECH = SPEECH_FILES


def _riff(fmt_body: bytes, data: bytes, *, extra_chunks: bytes = b"") -> bytes:
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + extra_chunks
    chunks += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _fmt(tag: int, channels: int, rate: int, bits: int) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def _extensible(sub_tag: int, channels: int, rate: int, bits: int) -> bytes:
    guid = struct.pack("<H", sub_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return _fmt(0xFFFE, channels, rate, bits) + struct.pack("<HHI", 22, bits, 0) + guid


# -- reading -----------------------------------------------------------------


@pytest.mark.parametrize("path", SPEECH, ids=lambda p: p.name)
def test_read_wav_matches_stdlib_wave(path: Path) -> None:
    with wave.open(str(path)) as w:
        expected = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        rate = w.getframerate()
    x, sr = read_wav(path)
    assert sr == rate
    assert x.dtype == np.float32
    assert x.shape == expected.shape
    np.testing.assert_array_equal(x * 32768.0, expected.astype(np.float32))


def test_read_wav_pcm_widths_and_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, size=(50, 2))
    cases = {
        # name: (fmt chunk, data bytes, tolerance)
        "u8": (
            _fmt(1, 2, 8000, 8),
            np.clip(np.round(ref * 128 + 128), 0, 255).astype(np.uint8).tobytes(),
            1 / 127,
        ),
        "s16": (_fmt(1, 2, 8000, 16), np.round(ref * 32767).astype("<i2").tobytes(), 1e-4),
        "s24": (
            _fmt(1, 2, 8000, 24),
            b"".join(int(v).to_bytes(3, "little", signed=True) for v in np.round(ref.ravel() * (2**23 - 1))),
            1e-6,
        ),
        "s32": (_fmt(1, 2, 8000, 32), np.round(ref * (2**31 - 1)).astype("<i4").tobytes(), 1e-7),
        "f32": (_fmt(3, 2, 8000, 32), ref.astype("<f4").tobytes(), 1e-7),
        "f64": (_fmt(3, 2, 8000, 64), ref.astype("<f8").tobytes(), 1e-7),
        "ext-s16": (_extensible(1, 2, 8000, 16), np.round(ref * 32767).astype("<i2").tobytes(), 1e-4),
        "ext-f32": (_extensible(3, 2, 8000, 32), ref.astype("<f4").tobytes(), 1e-7),
    }
    for name, (fmt, data, tol) in cases.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(_riff(fmt, data, extra_chunks=b"LIST" + struct.pack("<I", 3) + b"abc\x00"))
        x, sr = read_wav(path)
        assert sr == 8000, name
        assert x.dtype == np.float32 and x.shape == (50, 2), name
        np.testing.assert_allclose(x, ref, atol=tol, err_msg=name)


@pytest.mark.parametrize("bits", [16, 32])
def test_integer_samples_are_exactly_the_value_over_full_scale(bits: int) -> None:
    """Each value, over 2**(bits-1), rounded once to float32: the extremes
    and values that need rounding (32-bit ones past 24 bits) included."""
    info = np.iinfo(np.int16 if bits == 16 else np.int32)
    rng = np.random.default_rng(bits)
    values = np.concatenate([[info.min, info.min + 1, -1, 0, 1, info.max - 1, info.max],
                             rng.integers(info.min, info.max, 5000, endpoint=True)])  # fmt: skip
    ints = values.astype(f"<i{bits // 8}")
    x, _ = parse_wav(_riff(_fmt(1, 1, 16000, bits), ints.tobytes()))
    expected = (values.astype(np.float64) / float(1 << (bits - 1))).astype(np.float32)
    np.testing.assert_array_equal(x[:, 0], expected)


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_mono_decoding_is_the_down_mix_of_the_whole(bits: int, channels: int, monkeypatch) -> None:
    """Down-mixed a block at a time as it is decoded: the same float32
    values as decoding every channel and then down-mixing, blocks that do
    not divide the file included."""
    monkeypatch.setattr(audio, "_MIX_BLOCK_FRAMES", 7)
    rng = np.random.default_rng(channels * bits)
    data = rng.integers(0, 256, 101 * channels * bits // 8, dtype=np.uint8).tobytes()
    wav = _riff(_fmt(1, channels, 16000, bits), data)
    whole, rate = parse_wav(wav)
    mono, mono_rate = parse_wav(wav, mono=True)
    assert rate == mono_rate == 16000 and mono.shape == (101,) and mono.dtype == np.float32
    np.testing.assert_array_equal(mono, down_mix(whole))


def test_mono_decoding_never_holds_every_channel_as_floats() -> None:
    """Six channels of 16-bit PCM (12 bytes a frame): decoding to mono
    allocates little beyond its output (4 bytes a frame)."""
    import tracemalloc

    frames = 2_000_000
    wav = _riff(_fmt(1, 6, 16000, 16), np.zeros(frames * 6, "<i2").tobytes())
    tracemalloc.start()
    try:
        mono, _ = parse_wav(wav, mono=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mono.shape == (frames,)
    assert peak < 2 * mono.nbytes, f"{peak} bytes at the peak for a {mono.nbytes}-byte result"


def test_read_wav_oversized_data_chunk_reads_whole_frames(tmp_path: Path) -> None:
    pcm = np.arange(-5, 5, dtype="<i2").tobytes() + b"\x01"  # 10 samples + a stray byte
    raw = bytearray(_riff(_fmt(1, 1, 16000, 16), pcm))
    struct.pack_into("<I", raw, 40, 0xFFFFFFFF)  # size as left by a streaming writer
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(raw[:-1]))  # no pad byte: the file ends mid-sample
    x, _ = read_wav(path)
    np.testing.assert_array_equal(x[:, 0] * 32768, np.arange(-5, 5))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a RIFF"),
        (b"RIFF\x00\x00\x00\x00WAVX", "not a RIFF"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "truncated fmt"),
        (_riff(_fmt(1, 1, 16000, 16), b"")[:36], "truncated"),
        (_riff(_fmt(2, 1, 16000, 4), b"\x00" * 8), "format tag 0x0002"),
        (_riff(_fmt(0x55, 1, 16000, 16), b"\x00" * 8), "format tag 0x0055"),
        (_riff(_fmt(1, 0, 16000, 16), b"\x00" * 8), "zero channels"),
        (_riff(_fmt(1, 1, 0, 16), b"\x00" * 8), "sample rate of zero"),
        (_riff(_fmt(1, 1, 16000, 12), b"\x00" * 8), "12-bit PCM"),
        (_riff(_fmt(3, 1, 16000, 16), b"\x00" * 8), "16-bit float"),
        (_riff(_extensible(2, 1, 16000, 16), b"\x00" * 8), "format tag 0x0002"),
        (b"RIFF\x20\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00", "data chunk before fmt"),
    ],
)
def test_read_wav_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_wav(path)


def test_read_wav_rejects_inconsistent_block_align(tmp_path: Path) -> None:
    fmt = bytearray(_fmt(1, 2, 16000, 16))
    struct.pack_into("<H", fmt, 12, 3)
    path = tmp_path / "bad.wav"
    path.write_bytes(_riff(bytes(fmt), b"\x00" * 8))
    with pytest.raises(ValueError, match="block align"):
        read_wav(path)


# -- PCM helpers ---------------------------------------------------------------


def test_pcm16_to_float_range_and_values() -> None:
    ints = np.array([-32768, -1, 0, 1, 16384, 32767], dtype="<i2")
    x = pcm16_to_float(ints.tobytes())
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, ints.astype(np.float64) / 32768)
    assert pcm16_to_float(b"").shape == (0,)
    with pytest.raises(ValueError, match="even"):
        pcm16_to_float(b"\x00\x01\x02")


def test_down_mix_is_channel_mean() -> None:
    x = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.25, -0.25, 0.0]], dtype=np.float32)
    y = down_mix(x)
    assert y.dtype == np.float32 and y.shape == (3,)
    np.testing.assert_allclose(y, [0.0, 0.5, 0.0], atol=1e-7)
    np.testing.assert_array_equal(down_mix(x[:, :1]), x[:, 0])
    np.testing.assert_array_equal(down_mix(x[:, 0]), x[:, 0])
    with pytest.raises(ValueError):
        down_mix(np.zeros((3, 0), np.float32))


# -- writing -----------------------------------------------------------------


def _read_with_stdlib(path: Path) -> tuple[wave._wave_params, bytes]:
    with wave.open(str(path)) as w:
        return w.getparams(), w.readframes(w.getnframes())


@given(
    chunks=st.lists(st.binary(max_size=37), max_size=12),
    channels=st.integers(1, 3),
    sampwidth=st.sampled_from([1, 2, 3, 4]),
)
@settings(max_examples=60, deadline=None)
def test_wav_writer_valid_after_every_write(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes], channels: int, sampwidth: int
) -> None:
    path = tmp_path_factory.mktemp("w") / "out.wav"
    block = channels * sampwidth
    sent = b""
    with WavWriter(path, 22050, channels, sampwidth) as writer:
        for chunk in chunks:
            writer.write(chunk)
            sent += chunk
            whole = len(sent) - len(sent) % block
            # The file is checked while still open: nothing relies on close().
            params, frames = _read_with_stdlib(path)
            assert (params.nchannels, params.sampwidth, params.framerate) == (channels, sampwidth, 22050)
            assert frames == sent[:whole]
            assert writer.frames_written == whole // block
            riff_size, data_size = struct.unpack_from("<I", path.read_bytes(), 4)[0], whole
            assert riff_size + 8 == path.stat().st_size
            assert struct.unpack_from("<I", path.read_bytes(), 40)[0] == data_size


def test_wav_writer_never_closed_after_exception(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    pcm = np.arange(1000, dtype="<i2").tobytes()

    def client() -> None:
        writer = WavWriter(path, 16000, 1)
        writer.write(pcm[:999])
        writer.write(pcm[999:])
        raise ConnectionError("client vanished")

    with pytest.raises(ConnectionError):
        client()
    _, frames = _read_with_stdlib(path)
    assert frames == pcm
    x, sr = read_wav(path)
    assert sr == 16000 and x.shape == (1000, 1)


def test_wav_writer_close_is_idempotent_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    with pytest.raises(RuntimeError), WavWriter(path, 8000, 2) as writer:
        writer.write(b"\x01\x00\x02\x00\x03")
        raise RuntimeError
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"\x00\x00")
    _, frames = _read_with_stdlib(path)
    assert frames == b"\x01\x00\x02\x00"


def test_wav_writer_rejects_bad_parameters(tmp_path: Path) -> None:
    for args in [(0, 1, 2), (16000, 0, 2), (16000, 1, 5), (2**31, 2, 2)]:
        with pytest.raises(ValueError):
            WavWriter(tmp_path / "x.wav", *args)


# -- safe names ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        ".",
        "/abs/path.wav",
        "C:\\Windows\\system32\\evil.wav",
        "\\\\server\\share\\x.wav",
        "a/../../b",
        "nul\x00byte.wav",
        "line\nbreak\r\t.wav",
        "CON",
        "con.wav",
        "Nul.txt",
        "com1",
        "LPT9.wav",
        "aux.tar.gz",
        "CONIN$",
        "x" * 1000 + ".wav",
        "语" * 200,
        "",
        "   ",
        "....",
        "\u202ertl\u2028.wav",
        "\ud800lone-surrogate",
        None,
        123,
    ],
)
def test_safe_wav_name_is_a_single_harmless_component(name: object) -> None:
    result = safe_wav_name(name)
    assert result.endswith(".wav")
    stem = result[:-4]
    assert stem and stem.strip(" .") == stem
    assert len(result.encode("utf-8")) <= MAX_NAME_BYTES
    assert not set(result) & set('/\\<>:"|?*')
    assert all(ch.isprintable() for ch in result)
    assert stem.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT9", "CONIN$"}
    assert result not in {".", ".."} and not result.startswith(".")
    # On this OS it is one component that stays inside a directory.
    base = Path("/srv/audio")
    assert (base / result).parent == base
    assert os.path.basename(result) == result


def test_safe_wav_name_keeps_ordinary_names() -> None:
    assert safe_wav_name("test.wav") == "test.wav"
    assert safe_wav_name("test.WAV") == "test.wav"
    assert safe_wav_name("会议 录音 1") == "会议 录音 1.wav"
    assert safe_wav_name("clip.mp3") == "clip.mp3.wav"
    assert safe_wav_name("") == "audio.wav"
    assert safe_wav_name("CON") == "_CON.wav"
    assert safe_wav_name("a/b") == "a_b.wav"


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_safe_wav_name_fuzz(name: str) -> None:
    result = safe_wav_name(name)
    assert result.endswith(".wav") and len(result.encode("utf-8")) <= MAX_NAME_BYTES
    assert "/" not in result and "\\" not in result and "\x00" not in result
    assert not result.startswith(".") and result[:-4].strip(" .") == result[:-4]


def test_create_unique_wav_never_overwrites(tmp_path: Path) -> None:
    paths = []
    for _ in range(5):
        path, f = create_unique_wav(tmp_path, "../test.wav")
        with WavWriter(f, 16000, 1) as writer:
            writer.write(path.name.encode().ljust(20, b"\x00")[:20])
        paths.append(path)
    assert len(set(paths)) == 5
    assert all(p.parent == tmp_path for p in paths)
    assert [p.name for p in paths[:3]] == ["_test.wav", "_test-1.wav", "_test-2.wav"]
    for path in paths:  # each file still holds what its own writer wrote
        _, frames = _read_with_stdlib(path)
        assert frames.rstrip(b"\x00") == path.name.encode()[:20].rstrip(b"\x00")


def test_create_unique_wav_concurrent_threads(tmp_path: Path) -> None:
    results: list[Path] = []
    lock = threading.Lock()

    def worker() -> None:
        path, f = create_unique_wav(tmp_path, "same")
        f.close()
        with lock:
            results.append(path)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40 == len(set(results)) == len(list(tmp_path.iterdir()))


def test_create_unique_wav_does_not_follow_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    audio = tmp_path / "audio"
    audio.mkdir()
    try:
        (audio / "x.wav").symlink_to(target)
    except OSError:
        pytest.skip("cannot create symlinks here")
    path, f = create_unique_wav(audio, "x.wav")
    with WavWriter(f, 16000, 1) as writer:
        writer.write(b"\x00\x00")
    assert path.name == "x-1.wav"
    assert target.read_bytes() == b"precious"


def test_create_unique_wav_long_name_with_counter_stays_bounded(tmp_path: Path) -> None:
    names = set()
    for _ in range(3):
        path, f = create_unique_wav(tmp_path, "字" * 500)
        f.close()
        names.add(path.name)
        assert len(path.name.encode()) <= MAX_NAME_BYTES
    assert len(names) == 3
