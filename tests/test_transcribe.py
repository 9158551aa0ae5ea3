"""``transcribe`` output with segments, word times and token times."""

from __future__ import annotations

import functools
import io
import json
import wave

import pytest
from paths import SPEECH_FILES
from test_segments import frames, segmented

from trio_asr.cli.commands import main
from trio_asr.serving.config import ConfigError
from trio_asr.serving.config_file import load_config
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.segments import join_texts
from trio_asr.cli.transcribe import format_result, run_batch


def known_result():
    d = segmented("greedy")
    d.accept(frames("_ he*2 llo*2 _*10 你 好 _*3 wor ld"))
    return d.result(final=True)


def test_text_output_has_one_line_per_segment_and_word_times():
    out = format_result("a.wav", known_result(), as_json=False, nbest=1, timestamps=True, segments=True)
    assert out.splitlines() == [
        "a.wav\thello你好world",
        "  [    0.00     0.60]  hello",
        "  [    0.60     0.88]  你好world",
        "     0.04    0.20  hello",
        "     0.60    0.64  你",
        "     0.64    0.68  好",
        "     0.80    0.88  world",
    ]


def test_json_output_has_segments_words_and_tokens():
    record = json.loads(
        format_result("a.wav", known_result(), as_json=True, nbest=1, timestamps=True, segments=True)
    )
    assert [s["result"] for s in record["segments"]] == ["hello", "你好world"]
    assert [s["segment"] for s in record["segments"]] == [0, 1]
    assert [(s["bg"], s["ed"]) for s in record["segments"]] == [(0.0, 0.6), (0.6, 0.88)]
    assert [w["w"] for w in record["segments"][1]["times"]] == ["你", "好", "world"]
    assert record["times"] == [w for s in record["segments"] for w in s["times"]]
    assert record["times"][0] == {"w": "hello", "bg": 0.04, "ed": 0.2}
    assert [t["w"] for t in record["tokens"]] == ["he", "llo", "你", "好", "wor", "ld"]


def test_without_segments_the_output_is_as_before():
    record = json.loads(format_result("a.wav", known_result(), as_json=True, nbest=1, timestamps=False))
    assert record == {"file": "a.wav", "text": "hello你好world"}


def test_segments_of_a_file_spell_its_text(zipformer2_model_dir):
    rules = EndpointRules(silence_without_text=0.5, silence_after_text=0.2, max_segment=1.5)
    recognizer = Recognizer(load_model(zipformer2_model_dir), endpoint=rules)
    out = io.StringIO()
    paths = [str(SPEECH_FILES[-2])]
    failures = run_batch(recognizer, paths, nbest=1, timestamps=True, as_json=True, segments=True, out=out)
    assert failures == 0
    record = json.loads(out.getvalue())
    texts = [s["result"] for s in record["segments"]]
    assert len(texts) > 3
    assert functools.reduce(join_texts, texts) == record["text"]
    spans = [(s["bg"], s["ed"]) for s in record["segments"]]
    assert all(a < b <= a + 1.5 + 0.04 + 1e-6 for a, b in spans), spans  # rule 3, within a frame
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))


def test_cli_prints_vad_segments_as_json(zipformer2_model_dir, capsys):
    path = str(SPEECH_FILES[-1])
    argv = ["transcribe", "--model", str(zipformer2_model_dir), "--segments", "--timestamps", "--json", "--vad",
            "--endpoint-silence-after-text", "0.3", "--skip-non-speech", "0.5", path]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["segments"] and functools.reduce(join_texts, [s["result"] for s in record["segments"]]) == record["text"]
    assert record["tokens"] and record["times"]


@pytest.mark.parametrize(
    "flags",
    [["--endpoint-max-segment", "500"], ["--endpoint-silence-after-text", "0.01"], ["--skip-non-speech", "1"]],
)
def test_cli_refuses_bad_segment_flags_in_one_line(zipformer2_model_dir, capsys, flags):
    assert main(["transcribe", "--model", str(zipformer2_model_dir), *flags, str(SPEECH_FILES[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-asr transcribe: ") and err.count("\n") == 1


def test_serve_settings_refuse_skipping_without_vad():
    with pytest.raises(ConfigError, match="needs vad"):
        load_config(None, {"skip_non_speech": 1.0})
    assert load_config(None, {"skip_non_speech": 1.0, "vad": True}).skip_non_speech == 1.0


def test_no_time_runs_past_the_end_of_the_file(zipformer2_model_dir, capsys):
    """numbers.wav lasts 4.023 s; the model's padded last chunk used to time
    its last word and segment to 4.16 s."""
    [path] = [p for p in SPEECH_FILES if p.name == "numbers.wav"]
    with wave.open(str(path)) as w:
        duration = w.getnframes() / w.getframerate()
    argv = ["transcribe", "--model", str(zipformer2_model_dir), "--json", "--timestamps", "--segments",
            "--endpoint-max-segment", "1", str(path)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    segments = record["segments"]
    times = [*record["times"], *record["tokens"], *(w for s in segments for w in s["times"])]
    ends = [t["ed"] for t in times] + [s["ed"] for s in segments]
    assert len(segments) > 1 and times
    assert round(duration, 3) - 0.1 < max(ends) <= round(duration, 3)
    assert all(t["bg"] <= t["ed"] for t in times)
