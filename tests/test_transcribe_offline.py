"""``trio-asr transcribe --model OFFLINE_DIR``: SenseVoice and NeMo CTC
offline models, whole files and long ones cut into pieces, tags, errors."""

from __future__ import annotations

import functools
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import sherpa_onnx

from offlineutil import read_wav, sherpa_decode
from paths import SPEECH_FILES
from test_offline_pieces import spoken

from trio_asr.cli.commands import main
from trio_asr.recognition.hotwords import Hotword, compile_hotwords
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.pieces import MAX_PIECE_S
from trio_asr.recognition.segments import join_texts
from trio_asr.serving.config_file import load_config
from trio_asr.testing.nemo_ctc_offline import write_nemo_ctc_offline_model
from trio_asr.testing.sense_voice import write_sense_voice_model

WRITERS = {"sense-voice": write_sense_voice_model, "nemo": write_nemo_ctc_offline_model}
PHRASES = {"sense-voice": "我们", "nemo": "three"}
BEAM = load_config(None, {}).beam  # transcribe's default


@pytest.fixture(scope="module", params=list(WRITERS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    made = {}
    for name, write in WRITERS.items():
        made[name] = tmp_path_factory.mktemp(name)
        write(made[name])
    return made


@pytest.fixture(scope="module")
def model_dir(kind, model_dirs) -> Path:
    return model_dirs[kind]


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    """The clips with silences between them, over two pieces long."""
    samples, gaps = spoken(2 * MAX_PIECE_S + 5)
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav", samples), gaps


def transcribe_json(capsys, *argv: str) -> list[dict]:
    assert main(["transcribe", "--json", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_equals_the_offline_recognizer(kind, model_dir, capsys):
    paths = [str(p) for p in SPEECH_FILES[:3]]
    records = transcribe_json(capsys, "--model", str(model_dir), "--nbest", "3", "--timestamps", "--segments", *paths)
    recognizer = OfflineRecognizer(load_offline_model(model_dir), beam=BEAM)
    for path, record in zip(paths, records):
        expected = recognizer.recognize(read_wav(Path(path)), OfflineOptions(nbest=3))
        assert record["file"] == path and record["text"] == expected.result.text
        assert [(n["text"], n["score"]) for n in record["nbest"]] == [
            (t, round(s, 4)) for t, s in expected.result.nbest
        ]
        assert [t["w"] for t in record["times"]] == [t.piece for t in expected.result.times]
        assert [t["bg"] for t in record["tokens"]] == [round(t.start, 3) for t in expected.result.tokens]
        assert [s["result"] for s in record["segments"]] == [s.text for s in expected.result.segments]
        assert len(record["segments"]) <= 1
        if expected.tags is None:
            assert "lang" not in record and all("lang" not in s for s in record["segments"])
        else:
            tags = {"lang": expected.tags.lang, "emotion": expected.tags.emotion, "event": expected.tags.event}
            assert {k: record[k] for k in tags} == tags
            assert all({k: s[k] for k in tags} == tags for s in record["segments"])


def test_greedy_text_equals_sherpa_onnx(kind, model_dir, capsys):
    path = SPEECH_FILES[1]
    files = dict(model=str(model_dir / "model.onnx"), tokens=str(model_dir / "tokens.txt"))
    if kind == "sense-voice":
        sherpa = sherpa_onnx.OfflineRecognizer.from_sense_voice(**files)
    else:
        sherpa = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(**files)
    expected = sherpa_decode(sherpa, read_wav(path)).text
    (record,) = transcribe_json(capsys, "--model", str(model_dir), "--greedy", str(path))
    assert record["text"] and record["text"].replace(" ", "") == expected.replace("<unk>", "").replace(" ", "")


def test_text_output_is_the_streaming_format(model_dirs, capsys):
    path = str(SPEECH_FILES[2])
    assert main(["transcribe", "--model", str(model_dirs["sense-voice"]), "--segments", "--nbest", "2", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}\t") and len(lines) == 4
    assert lines[1].startswith("  1. ") and lines[3].startswith("  [    0.00     ")
    assert main(["transcribe", "--model", str(model_dirs["sense-voice"]), "--segments", "--tags", path]) == 0
    tagged = capsys.readouterr().out.splitlines()
    assert tagged[0] == lines[0] and tagged[1].startswith("  lang=")
    assert tagged[2].startswith(lines[3][:23] + tagged[1][2:] + "  ")


@pytest.mark.parametrize("vad", ["--vad", "--no-vad"])
def test_a_long_file_is_cut_at_silences_into_segments(kind, model_dir, long_file, vad, capsys):
    path, gaps = long_file
    (record,) = transcribe_json(capsys, "--model", str(model_dir), "--segments", "--timestamps", vad, str(path))
    segments = record["segments"]
    with wave.open(str(path)) as w:
        duration = w.getnframes() / w.getframerate()
    assert len(segments) >= 3
    assert [s["segment"] for s in segments] == list(range(len(segments)))
    spans = [(s["bg"], s["ed"]) for s in segments]
    assert spans[0][0] == 0 and spans[-1][1] <= round(duration, 3)
    assert all(0 < b - a <= MAX_PIECE_S for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert all(a <= w["bg"] <= w["ed"] <= b for s, (a, b) in zip(segments, spans) for w in s["times"])
    assert functools.reduce(join_texts, [s["result"] for s in segments]) == record["text"]
    if vad == "--no-vad":  # the cuts: in the silences between clips
        for _, cut in spans[:-1]:
            assert any(a / 16000 - 0.06 <= cut <= b / 16000 for a, b in gaps), cut
    # each piece gives what it gives alone
    recognizer = OfflineRecognizer(load_offline_model(model_dir), beam=BEAM)
    samples = read_wav(path)
    starts = [a for a, _ in spans] + [duration]
    first = recognizer.recognize(samples[: round(starts[1] * 16000)]).result
    assert first.text == segments[0]["result"]


@pytest.mark.parametrize("flags", [[], ["--language", "en", "--itn"], ["--language", "zh", "--no-itn"]])
def test_language_and_itn_reach_the_model(model_dirs, flags, capsys):
    directory = model_dirs["sense-voice"]
    path = SPEECH_FILES[0]
    (record,) = transcribe_json(capsys, "--model", str(directory), *flags, str(path))
    language = flags[1] if flags else "auto"
    expected = OfflineRecognizer(
        load_offline_model(directory), beam=BEAM, language=language, use_itn="--itn" in flags
    ).recognize(read_wav(path))
    assert record["text"] == expected.result.text and record["lang"] == expected.tags.lang
    if flags:
        assert record["lang"] == language


def test_language_and_itn_change_the_text(model_dirs, capsys):
    directory, path = str(model_dirs["sense-voice"]), str(SPEECH_FILES[0])
    texts = {
        tuple(flags): transcribe_json(capsys, "--model", directory, *flags, path)[0]["text"]
        for flags in ([], ["--language", "zh"], ["--itn"], ["--language", "en", "--itn"])
    }
    assert len(set(texts.values())) == len(texts)


def test_hotwords_as_the_library(kind, model_dir, tmp_path, capsys):
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text(f"{PHRASES[kind]} :4\n", encoding="utf-8")
    path = SPEECH_FILES[3]
    (record,) = transcribe_json(capsys, "--model", str(model_dir), "--hotwords-file", str(hotwords), str(path))
    model = load_offline_model(model_dir)
    compiled = compile_hotwords([Hotword(PHRASES[kind], 4.0)], model.tokens)
    expected = OfflineRecognizer(model, beam=BEAM, hotwords=compiled).recognize(read_wav(path))
    plain = OfflineRecognizer(model, beam=BEAM).recognize(read_wav(path))
    assert record["text"] == expected.result.text
    assert expected.result.text.count(PHRASES[kind]) > plain.result.text.count(PHRASES[kind])


def test_several_files_a_bad_one_and_a_resampled_one(model_dirs, tmp_path, capsys):
    from trio_asr.recognition.resample import resample

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = SPEECH_FILES[0]
    at_8k = write_wav(tmp_path / "8k.wav", resample(read_wav(good), 16000, 8000), 8000)
    argv = ["transcribe", "--model", str(model_dirs["nemo"]), str(good), str(bad), str(at_8k)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(good), str(at_8k)]
    errors = [line for line in captured.err.splitlines() if line.startswith("trio-asr transcribe: ")]
    assert len(errors) == 1 and errors[0].startswith(f"trio-asr transcribe: {bad}: not a")  # named, one line
    assert "transcribing [" in captured.err  # the progress bar's summary, as for streaming models


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("trio-asr transcribe: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "model, flags, words",
    [
        ("nemo", ["--language", "en"], ["--language", "NeMo CTC", "SenseVoice"]),
        ("nemo", ["--itn"], ["--itn", "SenseVoice"]),
        ("nemo", ["--tags"], ["--tags", "SenseVoice"]),
        ("sense-voice", ["--language", "fr"], ["--language fr", "auto, zh, en"]),
        ("sense-voice", ["--endpoint-max-segment", "5"], ["--endpoint-max-segment", "offline"]),
        ("sense-voice", ["--greedy", "--hotwords-file", "x.txt"], ["--hotwords-file needs beam search"]),
        ("streaming", ["--language", "en"], ["--language", "streaming model"]),
        ("streaming", ["--tags"], ["--tags", "streaming model"]),
    ],
)
def test_errors_are_one_line(model_dirs, zipformer2_model_dir, model, flags, words, capsys):
    directory = zipformer2_model_dir if model == "streaming" else model_dirs[model]
    assert main(["transcribe", "--model", str(directory), *flags, str(SPEECH_FILES[0])]) == 2
    err = one_line_error(capsys)
    assert all(word in err for word in words), err


def test_a_broken_offline_model_fails_in_one_line(model_dirs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((model_dirs["nemo"] / "model.onnx").read_bytes())
    assert main(["transcribe", "--model", str(broken), str(SPEECH_FILES[0])]) == 1
    assert "tokens.txt" in one_line_error(capsys)
