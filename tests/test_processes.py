"""``trio-asr serve --processes 2``: one server of two worker processes on one port.

One supervisor and its workers run as a real command (a subprocess) on the
fixture model: streams are spread over both workers, ``/metrics`` sums
them, ``--max-connections`` and ``/health`` are the whole server's, a
worker killed mid-stream is restarted and its stream's WAV is valid, and
SIGTERM drains and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families
from serverutil import end_msg, recv_json, start_msg, ws_url

from trio_asr.serving.processes import reuse_port_supported

pytestmark = pytest.mark.skipif(
    not reuse_port_supported() or not Path("/proc/self/fd").is_dir(), reason="SO_REUSEPORT and /proc (Linux)"
)

MAX_CONNECTIONS = 4
_PID = re.compile(r"\[worker (\d) pid (\d+)\]")


class Served:
    """The command's process, port and stderr lines (read by a thread)."""

    def __init__(self, proc: subprocess.Popen[str], audio_dir: Path) -> None:
        self.proc = proc
        self.audio_dir = audio_dir
        self.lines: list[str] = []
        self.port = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 20) -> re.Match[str]:
        """The first line from ``start`` on that matches ``pattern``."""
        with self._changed:
            found: list[re.Match[str]] = []

            def seen() -> bool:
                found[:] = [m for line in self.lines[start:] if (m := re.search(pattern, line))][:1]
                return bool(found) or self.proc.poll() is not None

            self._changed.wait_for(seen, timeout)
        assert found, f"no line matching {pattern!r}:\n" + "\n".join(self.lines)
        return found[0]

    def workers(self) -> dict[int, int]:
        """Worker index -> pid of the latest "listening" lines."""
        return {
            int(m[1]): int(m[2]) for line in self.lines if "listening" in line and (m := _PID.search(line))
        }


@pytest.fixture(scope="module")
def served(zipformer2_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    audio_dir = tmp_path_factory.mktemp("audio")
    cmd = [
        sys.executable, "-m", "trio_asr", "serve", "--processes", "2", "--port", "0", "--model",
        str(zipformer2_model_dir), "--audio-dir", str(audio_dir), "--max-connections", str(MAX_CONNECTIONS),
        "--log-level", "info", "--grace-period", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    server = Served(proc, audio_dir)
    try:
        server.port = int(server.wait_for(r"^trio-asr: serving ws://[^:]+:(\d+)/")[1])
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def pcm(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 3000).astype("<i2").tobytes()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def health(port: int) -> tuple[int, dict[str, object]]:
    status, body = await http_get(port, "/health")
    return status, json.loads(body)


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def one_stream(port: int, name: str) -> None:
    async with trio_websocket.open_websocket_url(ws_url(port)) as ws:
        await ws.send_message(start_msg(name))
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(pcm(0.3))
        await ws.send_message(end_msg(name))
        while (reply := await recv_json(ws)).get("signal") != "end":
            pass
        assert reply["status"] == "ok"


async def test_streams_spread_over_both_workers_and_metrics_sum_them(served: Served):
    made = 0
    with trio.fail_after(30):
        while made < 40:
            made += 1
            await one_stream(served.port, f"spread{made}.wav")
            served.wait_for(f"connection id=.*peer=.*outcome", timeout=5)
            pids = {_PID.search(line)[2] for line in served.lines if " connection id=" in line}  # type: ignore[index]
            if len(pids) == 2:
                break
    assert len(pids) == 2, "every connection went to one worker"
    await trio.sleep(1.3)  # every worker has published its metrics since
    metrics = await scrape(served.port)
    assert metrics[("trio_asr_connections_total", ())] == made
    assert metrics[("trio_asr_streams_total", (("outcome", "completed"),))] == made
    assert metrics[("trio_asr_connections_open", ())] == 0
    assert metrics[("trio_asr_build_info", tuple(metrics_labels(metrics, "trio_asr_build_info")))] == 1


def metrics_labels(metrics: dict, name: str) -> tuple[tuple[str, str], ...]:
    (labels,) = [labels for sample, labels in metrics if sample == name]
    return labels


async def test_max_connections_and_health_are_the_whole_servers(served: Served):
    status, body = await health(served.port)
    assert (status, body["status"], body["processes"]) == (200, "ok", 2)
    async with trio.open_nursery() as nursery:
        held = [await trio_websocket.connect_websocket_url(nursery, ws_url(served.port)) for _ in range(MAX_CONNECTIONS)]
        status, body = await health(served.port)
        assert (status, body["status"], body["connections"]) == (503, "full", MAX_CONNECTIONS)
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with trio_websocket.open_websocket_url(ws_url(served.port)):
                pass
        assert refused.value.status_code == 503
        for ws in held:
            await ws.aclose()
    with trio.fail_after(5):
        while (await health(served.port))[0] != 200:
            await trio.sleep(0.05)


def open_wavs(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(".wav"):
            found.add(Path(target).name)
    return found


async def test_a_killed_worker_is_restarted_and_its_streams_audio_is_valid(served: Served):
    audio = pcm(1.5, seed=1)
    async with trio.open_nursery() as nursery:
        sockets = {}
        for i in range(MAX_CONNECTIONS):
            ws = await trio_websocket.connect_websocket_url(nursery, ws_url(served.port))
            await ws.send_message(start_msg(f"killed{i}.wav"))
            assert (await recv_json(ws))["signal"] == "server_ready"
            sockets[f"killed{i}.wav"] = ws
        for ws in sockets.values():
            for at in range(0, len(audio), 6400):
                await ws.send_message(audio[at : at + 6400])
        await trio.sleep(1.0)  # received, and written (every 32 KiB)
        workers = served.workers()
        index, pid = next((i, p) for i, p in sorted(workers.items()) if open_wavs(p))
        victims = open_wavs(pid)
        lines = len(served.lines)
        os.kill(pid, signal.SIGKILL)
        served.wait_for(rf"worker exited worker={index} pid={pid} how=\"killed by SIGKILL\"", lines)
        served.wait_for(rf"\[worker {index} pid (?!{pid}\])\d+\]: listening", lines)
        for name, ws in sockets.items():
            if name not in victims:
                await ws.send_message(end_msg(name))
                while (await recv_json(ws)).get("signal") != "end":
                    pass
            await ws.aclose()
    for name in victims:
        path = served.audio_dir / name
        with wave.open(str(path)) as wav:
            frames = wav.readframes(wav.getnframes())
        assert path.stat().st_size == 44 + len(frames), "the header says how much data the file holds"
        assert 32768 <= len(frames) <= len(audio) and audio.startswith(frames)
    await one_stream(served.port, "after.wav")
    status, body = await health(served.port)
    assert (status, body["processes"]) == (200, 2)


async def test_sigterm_drains_the_workers_and_exits_0(served: Served):
    async with trio_websocket.open_websocket_url(ws_url(served.port)) as ws:
        await ws.send_message(start_msg("drained.wav"))
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(pcm(0.5))
        lines = len(served.lines)
        served.proc.send_signal(signal.SIGTERM)
        served.wait_for("shutting down", lines)
        await trio.sleep(0.3)
        await ws.send_message(end_msg("drained.wav"))  # the open stream may finish
        while (reply := await recv_json(ws)).get("signal") != "end":
            pass
        assert reply["status"] == "ok"
    assert await trio.to_thread.run_sync(served.proc.wait, 20) == 0
    assert served.workers() and all(not Path(f"/proc/{pid}").exists() for pid in served.workers().values())


# ------------------------------------------------------------ the shared state itself


def test_limits_hold_across_workers_and_a_dead_workers_slot_is_freed(tmp_path):
    from trio_asr.serving.processes import CONNECTIONS, UPLOADS, SharedPlaces, SharedState

    supervisor = SharedState.create(tmp_path, 2)
    a, b = SharedState(tmp_path, 2, 0), SharedState(tmp_path, 2, 1)
    uploads_a, uploads_b = SharedPlaces(a, UPLOADS, 3), SharedPlaces(b, UPLOADS, 3)
    assert [uploads_a.take(), uploads_b.take(), uploads_b.take()] == [True, True, True]
    assert uploads_a.full() and not uploads_a.take() and not uploads_b.take()
    uploads_b.release()
    assert uploads_a.take() and a.total(UPLOADS) == 3 and a.total(CONNECTIONS) == 0
    supervisor.clear(0)  # worker 0 died holding two
    assert b.total(UPLOADS) == 1 and uploads_b.take()
    for state in (a, b, supervisor):
        state.close()


def test_health_is_503_only_when_no_worker_can_take_work(tmp_path):
    from trio_asr.serving.processes import SharedState

    SharedState.create(tmp_path, 2)
    a, b = SharedState(tmp_path, 2, 0), SharedState(tmp_path, 2, 1)
    body = {"status": "ok", "connections": 0, "max_connections": 10, "queue_delay": 0.1}
    b.publish(draining=False, overloaded=False, no_audio=False, delays=(0.4, 0.0))
    status, merged = a.health(body, "overloaded", None)
    assert (status, merged["queue_delay"], merged["processes"]) == (200, 0.4, 2)
    b.publish(draining=False, overloaded=True, no_audio=False, delays=(2.0, 0.0))
    assert a.health(body, "overloaded", None)[1]["status"] == "overloaded"
    assert a.health(body, None, None)[0] == 200
    b.publish(draining=True, overloaded=False, no_audio=False, delays=(0.0, 0.0))
    assert a.health(body, "shutting down", None)[1]["status"] == "shutting down"
    assert a.health(body, "cannot save audio", "No space left on device")[1]["error"] == "No space left on device"


def test_metrics_of_an_exited_worker_stay_in_the_sums(tmp_path):
    from trio_asr.serving.metrics import ServerMetrics
    from trio_asr.serving.processes import SharedState

    supervisor = SharedState.create(tmp_path, 2)
    a, b = SharedState(tmp_path, 2, 0), SharedState(tmp_path, 2, 1)
    ma, mb = ServerMetrics(), ServerMetrics()
    for m, n in ((ma, 1), (mb, 2)):
        for _ in range(n):
            m.connection_opened()
    mb.track_queue_delay(lambda: 0.7)
    b.write_metrics(mb.exposition()[0])

    def value(text: bytes, name: str) -> float:
        return next(s.value for f in text_string_to_metric_families(text.decode()) for s in f.samples if s.name == name)

    merged = a.merged_metrics(ma.exposition()[0])
    assert value(merged, "trio_asr_connections_total") == 3 and value(merged, "trio_asr_connections_open") == 3
    assert value(merged, "trio_asr_model_queue_delay_current_seconds") == 0.7
    supervisor.retire(1)  # worker 1 exited: its counters stay, its gauges go
    merged = a.merged_metrics(ma.exposition()[0])
    assert value(merged, "trio_asr_connections_total") == 3 and value(merged, "trio_asr_connections_open") == 1
    assert value(merged, "trio_asr_model_queue_delay_current_seconds") == 0


def test_processes_is_validated_and_needs_so_reuseport(monkeypatch, capsys, zipformer2_model_dir):
    from trio_asr.cli import supervisor
    from trio_asr.cli.commands import main

    for bad in ("0", "65"):
        assert main(["serve", "--processes", bad, "--model", str(zipformer2_model_dir)]) == 2
        assert "processes" in capsys.readouterr().err
    monkeypatch.setattr(supervisor, "reuse_port_supported", lambda: False)
    assert main(["serve", "--processes", "2", "--model", str(zipformer2_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SO_REUSEPORT" in err and "--processes 1" in err


def test_a_workers_reason_is_taken_once(tmp_path):
    """The reason a worker leaves when it cannot start is read once, at its
    exit: a later exit of a restarted worker is not blamed on it."""
    from trio_asr.cli.supervisor import _startup_failure

    assert _startup_failure(tmp_path, 0) is None
    (tmp_path / "worker-0.failed").write_text("cannot read model.onnx\n", encoding="utf-8")
    assert _startup_failure(tmp_path, 1) is None
    assert _startup_failure(tmp_path, 0) == "cannot read model.onnx"
    assert _startup_failure(tmp_path, 0) is None
