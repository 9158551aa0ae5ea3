"""The ``trio-asr`` command line, run in-process (and once as a real process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from paths import SPEECH_FILES

from trio_asr import __version__
from trio_asr.cli.commands import main
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.cli.transcribe import transcribe_file


def closed_port_url() -> str:
    """A base URL on loopback where nothing listens: downloads fail at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No model anywhere: empty cache, no TRIO_ASR_MODEL_DIR, unreachable download URL."""
    monkeypatch.delenv("TRIO_ASR_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TRIO_ASR_MODEL_URL", closed_port_url())
    return os.environ.copy()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"trio-asr {__version__}"


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "client", "transcribe", "models"):
        assert command in out


def test_transcribe_json_equals_the_library(zipformer2_model_dir, capsys):
    files = [str(p) for p in SPEECH_FILES[:3]]
    assert main(["transcribe", "--model", str(zipformer2_model_dir), "--json", "--nbest", "3", *files]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    recognizer = Recognizer(load_model(zipformer2_model_dir))
    assert [r["file"] for r in records] == files
    for record, path in zip(records, files):
        expected = transcribe_file(recognizer, path, nbest=3)
        assert record["text"] == expected.text and expected.text
        assert [h["text"] for h in record["nbest"]] == [t for t, _ in expected.nbest]


def test_transcribe_text_output_with_nbest_and_timestamps(zipformer2_model_dir, capsys):
    path = str(SPEECH_FILES[0])
    assert main(["transcribe", "--model", str(zipformer2_model_dir), "--nbest", "2", "--timestamps", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = transcribe_file(Recognizer(load_model(zipformer2_model_dir)), path, nbest=2)
    assert lines[0] == f"{path}\t{expected.text}"
    assert lines[1].split(maxsplit=2)[0] == "1." and lines[2].split(maxsplit=2)[0] == "2."
    assert len(lines) == 3 + len(expected.times)
    start, end, piece = lines[3].split(maxsplit=2)
    assert (float(start), float(end), piece) == pytest.approx(
        (expected.times[0].start, expected.times[0].end, expected.times[0].piece), abs=0.01
    )


def test_transcribe_reports_a_bad_file_and_goes_on(zipformer2_model_dir, tmp_path, capsys):
    bad = tmp_path / "not-a.wav"
    bad.write_bytes(b"RIFF nonsense")
    good = str(SPEECH_FILES[0])
    assert main(["transcribe", "--model", str(zipformer2_model_dir), str(bad), good]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(good + "\t")
    assert str(bad) in captured.err


def test_transcribe_without_a_model_says_what_to_do(offline_env, capsys):
    assert main(["transcribe", str(SPEECH_FILES[0])]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.split("trio-asr transcribe: ", 1)[1]
    assert "--model" in err and "TRIO_ASR_MODEL_DIR" in err


def test_models_lists_the_default_model(offline_env, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sherpa-onnx-streaming-zipformer-small-ctc-zh-int8-2025-04-01\tnot downloaded" in out


def test_serve_without_a_model_exits_with_one_actionable_line(offline_env):
    """The README's first command on a machine that cannot download the model."""
    proc = subprocess.run(
        [sys.executable, "-m", "trio_asr", "serve", "--port", "0"],
        env=offline_env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trio-asr serve: ") and "--model" in lines[0]


# ------------------------------------------------------------ one line per failure


def one_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"trio-asr {command}: ")
    return lines[0]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trio_asr", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_client_with_no_server_says_so(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["client", "--url", f"ws://127.0.0.1:{port}/paddlespeech/asr/streaming", str(SPEECH_FILES[0])]) == 1
    line = one_line(capsys.readouterr().err, "client")
    assert "cannot connect" in line and "server running" in line


def test_client_with_a_bad_file_says_so(tmp_path, capsys):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"nonsense")
    assert main(["client", str(bad)]) == 1
    assert str(bad) in one_line(capsys.readouterr().err, "client")


def test_serve_on_a_port_in_use_is_one_line(zipformer2_model_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(zipformer2_model_dir),
                       "--audio-dir", str(tmp_path / "a"))  # fmt: skip
    assert proc.returncode == 1
    assert "--port" in one_line(proc.stderr, "serve")


def test_serve_with_an_unusable_audio_dir_is_one_line(zipformer2_model_dir, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    proc = run_cli("serve", "--host", "127.0.0.1", "--port", "0", "--model", str(zipformer2_model_dir),
                   "--audio-dir", str(not_a_dir))  # fmt: skip
    assert proc.returncode == 1
    line = one_line(proc.stderr, "serve")
    assert str(not_a_dir) in line and "--audio-dir" in line


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('port = "8092"\n', "port must be an integer, got '8092'"),
        ("max-connections = 3\n", "keys use underscores: max_connections"),
        ("max_conections = 3\n", "did you mean max_connections?"),
        ("save_audio = 1\n", "save_audio must be true or false"),
        ("[server]\nbeam = 100000\n", "beam must be between 1 and 256"),
    ],
)
def test_config_file_errors_name_the_key(tmp_path, capsys, toml, expected):
    path = tmp_path / "server.toml"
    path.write_text(toml)
    assert main(["serve", "--config", str(path)]) == 2
    assert expected in one_line(capsys.readouterr().err, "serve")


def test_every_setting_has_a_flag_and_a_help_text():
    import attrs

    from trio_asr.cli.commands import build_parser
    from trio_asr.serving.config import ServerConfig

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for field in attrs.fields(ServerConfig):
        assert "--" + field.name.replace("_", "-") in flags
        assert field.metadata["help"]
    text = serve.format_help()
    assert "ServerConfig" not in text and "Serve the PaddleSpeech" in text


def test_help_texts_have_no_markup(capsys):
    for command in ("client", "serve", "transcribe", "models"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "``" not in out and ":class:" not in out and ":func:" not in out


@pytest.mark.parametrize("name", ["foo", "/some/dir"])
def test_models_download_of_an_unknown_name_names_the_flag(offline_env, capsys, name):
    assert main(["models", "--download", name]) == 2
    line = one_line(capsys.readouterr().err, "models")
    assert f"--download {name}" in line and "known" in line


def test_models_shows_language_size_and_kind(offline_env, capsys):
    assert main(["models"]) == 0
    fields = capsys.readouterr().out.splitlines()[0].split("\t")
    assert fields[2] == "Chinese" and fields[3].endswith("MB download") and "CTC" in fields[4]


def test_serve_settles_the_garbage_collector_before_serving(zipformer2_model_dir, tmp_path, monkeypatch):
    """Startup's objects are frozen and the thresholds raised once the model
    is loaded, before the event loop starts (see settle_garbage_collector)."""
    import gc

    import trio

    from trio_asr.cli import commands as cli

    calls: list = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(t))
    monkeypatch.setattr(cli, "_build_recognizer", _recording(cli._build_recognizer, calls, "model loaded"))
    monkeypatch.setattr(trio, "run", lambda fn: calls.append("serving"))
    assert main(["serve", "--model", str(zipformer2_model_dir), "--port", "0", "--no-save-audio",
                 "--audio-dir", str(tmp_path)]) == 0  # fmt: skip
    assert calls == ["model loaded", "freeze", cli.SERVING_GC_THRESHOLDS, "serving"]


def test_settle_garbage_collector_freezes_startup_and_raises_the_thresholds():
    code = (
        "import gc; from trio_asr.cli.commands import settle_garbage_collector, SERVING_GC_THRESHOLDS;"
        "settle_garbage_collector();"
        "print(gc.get_freeze_count() > 1000, gc.get_threshold() == SERVING_GC_THRESHOLDS)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def _recording(fn, calls: list, label: str):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        calls.append(label)
        return result

    return wrapper
