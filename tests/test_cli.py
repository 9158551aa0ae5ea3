"""The ``trio-asr`` command line, run in-process (and once as a real process)."""

from __future__ import annotations

import errno
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
    assert main(["transcribe", "--model", str(zipformer2_model_dir), str(bad), good]) == 2  # bad input
    captured = capsys.readouterr()
    assert captured.out.startswith(good + "\t")
    assert f"trio-asr transcribe: {bad}: not a RIFF/WAVE file" in captured.err


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
    assert main(["client", str(bad)]) == 2  # bad input
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


def test_serve_on_a_host_that_is_not_here_is_one_line_about_host(zipformer2_model_dir, tmp_path):
    """An address this machine does not have: the hint is --host, not
    --port, and no warning about who can reach it comes first."""
    proc = run_cli("serve", "--host", "192.0.2.1", "--port", "0", "--model", str(zipformer2_model_dir),
                   "--audio-dir", str(tmp_path / "a"))  # fmt: skip
    assert proc.returncode == 1
    line = one_line(proc.stderr, "serve")
    assert "192.0.2.1" in line and "--host" in line and "--port" not in line


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), "pick another --port"),
        (OSError(errno.EACCES, "Permission denied"), "below 1024"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "check --host"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "check --host"),
        (OSError(errno.EMFILE, "Too many open files"), None),
    ],
)
def test_why_a_server_cannot_listen_names_the_setting_to_change(error, hint):
    from trio_asr.serving.addresses import listen_error

    line = listen_error("example.host", 8090, error)
    assert line.startswith(f"cannot listen on example.host:8090: {error.strerror}")
    assert (hint in line) if hint else "(" not in line


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize(
    ("setting", "status"),
    [
        (("--auth-tokens-file", "EMPTY"), 2),  # a bad setting
        (("--certfile", "MISSING"), 2),
        (("--audio-dir", "FILE"), 1),  # the machine, not a setting's form
    ],
)
def test_a_server_that_cannot_start_says_why_in_one_line(zipformer2_model_dir, tmp_path, processes, setting, status):
    """With --processes as without: one line (the worker's reason, not the
    supervisor's as well) and the status of what is at fault."""
    files = {"EMPTY": tmp_path / "tokens.txt", "MISSING": tmp_path / "no-cert.pem", "FILE": tmp_path / "file"}
    files["EMPTY"].write_text("# no token here\n")
    files["FILE"].write_text("x")
    flag, value = setting
    argv = ["serve", "--host", "127.0.0.1", "--port", "0", "--model", str(zipformer2_model_dir),
            "--processes", processes, "--audio-dir", str(tmp_path / "audio"), flag, str(files[value])]  # fmt: skip
    proc = run_cli(*argv)
    assert proc.returncode == status, proc.stderr
    assert str(files[value]) in one_line(proc.stderr, "serve")


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
    """The malloc arenas are limited before the model loads; startup's
    objects are frozen and the thresholds raised once it is loaded, before
    the event loop starts (see settle_garbage_collector)."""
    import gc

    import trio

    from trio_asr.cli import commands as cli

    calls: list = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(t))
    monkeypatch.setattr(cli, "limit_malloc_arenas", lambda: calls.append("arenas"))
    monkeypatch.setattr(cli, "_build_recognizer", _recording(cli._build_recognizer, calls, "model loaded"))
    monkeypatch.setattr(trio, "run", lambda fn: calls.append("serving"))
    assert main(["serve", "--model", str(zipformer2_model_dir), "--port", "0", "--no-save-audio",
                 "--audio-dir", str(tmp_path)]) == 0  # fmt: skip
    assert calls == ["arenas", "model loaded", "freeze", cli.SERVING_GC_THRESHOLDS, "serving"]


# Eight threads malloc at once (each then waits for the others, so none
# hands its arena on), and glibc's malloc_info lists the arenas ("heaps").
_COUNT_ARENAS = """
import ctypes, sys, tempfile, threading
from trio_asr.cli.commands import limit_malloc_arenas
limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(9)
def allocate():
    libc.malloc(4096)
    together.wait()
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
together.wait()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    heaps = open(out.name).read().count("<heap nr=")
together.wait()
print(limited, heaps)
"""


def _arenas(mode: str, env: dict[str, str]) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", _COUNT_ARENAS, mode], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    limited, heaps = proc.stdout.split()
    return limited, int(heaps)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="malloc arenas are glibc's")  # fmt: skip
def test_serving_limits_glibc_malloc_arenas_unless_the_environment_says_otherwise():
    from trio_asr.cli.commands import SERVING_MALLOC_ARENAS

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    limited, heaps = _arenas("limit", env)
    assert limited == "True" and heaps <= SERVING_MALLOC_ARENAS
    _, default_heaps = _arenas("default", env)
    assert default_heaps > SERVING_MALLOC_ARENAS  # what the limit changes: one per thread, by glibc's default
    limited, heaps = _arenas("limit", {**env, "MALLOC_ARENA_MAX": "8"})
    assert limited == "False" and heaps > SERVING_MALLOC_ARENAS
    limited, heaps = _arenas("limit", {**env, "GLIBC_TUNABLES": "glibc.malloc.arena_max=8"})
    assert limited == "False" and heaps > SERVING_MALLOC_ARENAS


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


# ------------------------------------------------------------ one format, one policy (Hardening II, 15)


@pytest.fixture
async def fixture_server(nursery, tmp_path, zipformer2_model_dir):
    """A server on the fixture model, and the recognizer it runs."""
    from serverutil import ws_url

    from trio_asr.serving.config import ServerConfig
    from trio_asr.serving.server import serve

    recognizer = Recognizer(load_model(zipformer2_model_dir))
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", save_audio=False)
    server = await nursery.start(serve, config, recognizer)
    return ws_url(server.port)


async def test_client_and_transcribe_print_the_nbest_alike(fixture_server, zipformer2_model_dir, capsys):
    import trio

    path = str(SPEECH_FILES[0])
    assert await trio.to_thread.run_sync(main, ["client", "--url", fixture_server, "--nbest", "3", path]) == 0
    client = capsys.readouterr().out.splitlines()
    assert main(["transcribe", "--model", str(zipformer2_model_dir), "--nbest", "3", path]) == 0
    transcribe = capsys.readouterr().out.splitlines()
    assert transcribe[0] == f"{path}\t{client[0]}"
    assert client[1:] == transcribe[1:] and len(client) == 4
    assert [line.split()[0] for line in client[1:]] == ["1.", "2.", "3."]


async def test_client_streams_several_files_one_stream_each_in_order(fixture_server, zipformer2_model_dir, capsys):
    import trio

    paths = [str(p) for p in SPEECH_FILES[:3]]
    assert await trio.to_thread.run_sync(main, ["client", "--url", fixture_server, *paths]) == 0
    client = capsys.readouterr().out.splitlines()
    assert main(["transcribe", "--model", str(zipformer2_model_dir), *paths]) == 0
    assert client == capsys.readouterr().out.splitlines()  # path<TAB>text each, in order
    args = ["client", "--url", fixture_server, "--json", *paths]
    assert await trio.to_thread.run_sync(main, args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in records] == [p.name for p in SPEECH_FILES[:3]]
    assert [r["file"] for r in records] == paths  # the path, which two files of one name do not share


@pytest.mark.parametrize("command", ["client", "transcribe"])
def test_a_missing_file_is_one_line_naming_it_and_status_2(zipformer2_model_dir, tmp_path, capsys, command):
    missing = tmp_path / "nope.wav"
    model = ["--model", str(zipformer2_model_dir)] if command == "transcribe" else []
    assert main([command, *model, str(SPEECH_FILES[0]), str(missing)]) == 2
    line = one_line(capsys.readouterr().err, command)
    assert line == f"trio-asr {command}: {missing}: no such file"
    assert capsys.readouterr().out == ""  # refused before any work


def test_a_directory_given_as_a_file_is_one_line_naming_it(tmp_path, capsys):
    assert main(["client", str(tmp_path)]) == 2
    assert one_line(capsys.readouterr().err, "client") == f"trio-asr client: {tmp_path}: a directory, not an audio file"


def test_model_given_as_its_onnx_file_loads_that_file(zipformer2_model_dir, tmp_path, capsys):
    import shutil

    path = str(SPEECH_FILES[0])
    assert main(["transcribe", "--model", str(zipformer2_model_dir), path]) == 0
    expected = capsys.readouterr().out
    # beside another ONNX file that the directory alone would prefer
    model_dir = tmp_path / "two-models"
    shutil.copytree(zipformer2_model_dir, model_dir)
    (model_dir / "model.onnx").rename(model_dir / "chosen.onnx")
    (model_dir / "model.int8.onnx").write_bytes(b"not a model")
    assert main(["transcribe", "--model", str(model_dir / "chosen.onnx"), path]) == 0
    assert capsys.readouterr().out == expected
    assert main(["transcribe", "--model", str(model_dir / "tokens.txt"), path]) == 1
    line = one_line(capsys.readouterr().err, "transcribe")
    assert "a file, not a model directory" in line and str(model_dir) in line


def test_models_download_offline_advises_what_models_can_do(offline_env, capsys):
    from trio_asr.cli.model_store import DEFAULT_MODEL, cache_root

    assert main(["models", "--download", DEFAULT_MODEL]) == 1
    line = one_line(capsys.readouterr().err, "models")
    assert "--model" not in line and "TRIO_ASR_MODEL_DIR" not in line  # not options of `models`
    assert "TRIO_ASR_MODEL_URL" in line and str(cache_root()) in line and f"{DEFAULT_MODEL}.tar.bz2" in line


def test_the_exit_statuses_are_documented():
    from paths import DATA_DIR

    text = (DATA_DIR.parent.parent / "docs" / "commands.md").read_text()
    section = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    for status in ("0", "1", "2", "130"):
        assert f"`{status}`" in section
