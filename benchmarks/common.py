"""Shared pieces of the benchmarks: where things are, test audio, fixture models.

Benchmarks run as scripts (``python benchmarks/<name>.py``: their own
directory comes first on the import path) and import this as ``common``; the
tests that import benchmark modules get ``benchmarks/`` from the ``pythonpath``
of pytest's settings in ``pyproject.toml``.

- :func:`speech` loads every WAV of the speech directory (the clips kept in
  ``tests/data/audio``, or ``$TRIO_ASR_SHARED_DIR/audio``) as 16 kHz mono float32;
- :func:`fixture_model` writes the real-size synthetic Zipformer2-CTC model
  (the default model's geometry, random weights) into ``benchmarks/.cache``,
  in float32 or dynamically int8-quantized (the real default model is int8),
  once per version of its builder code;
- :func:`sense_voice_fixture` does the same for the real-size synthetic
  SenseVoice-Small (the second pass's offline model);
- :func:`write_results` stores a JSON record under ``benchmarks/results``;
  :func:`write_results_and_plot` also draws its plot there when matplotlib is
  installed (the ``[bench]`` extra) and says so in one line when it is not.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trio_asr.audio import down_mix, read_wav
from trio_asr.cli.progress import Progress
from trio_asr.recognition.resample import resample

__all__ = [
    "CACHE_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "SAMPLE_RATE",
    "Progress",
    "fixture_model",
    "sense_voice_fixture",
    "shared_dir",
    "speech",
    "tile_to",
    "plotting_unavailable",
    "write_results",
    "write_results_and_plot",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / "benchmarks" / ".cache"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SAMPLE_RATE = 16000


def shared_dir() -> Path:
    """``$TRIO_ASR_SHARED_DIR``, else the repository's ``tests/data`` (as tests/paths.py)."""
    return Path(os.environ.get("TRIO_ASR_SHARED_DIR") or REPO_ROOT / "tests" / "data")


def speech(audio_dir: Path | None = None) -> list[tuple[str, np.ndarray]]:
    """``(file name, float32 mono samples at 16 kHz)`` for every WAV in ``audio_dir``."""
    audio_dir = audio_dir or shared_dir() / "audio"
    files = sorted(Path(audio_dir).glob("*.wav"))
    if not files:
        raise SystemExit(f"no WAV files in {audio_dir} (set TRIO_ASR_SHARED_DIR or --audio-dir)")
    clips = []
    for path in files:
        samples, rate = read_wav(path)
        mono = down_mix(samples)
        if rate != SAMPLE_RATE:
            mono = resample(mono, rate, SAMPLE_RATE)
        clips.append((path.name, np.ascontiguousarray(mono, dtype=np.float32)))
    return clips


def tile_to(clips: list[tuple[str, np.ndarray]], seconds: float, offset: int = 0) -> np.ndarray:
    """The clips joined (starting at clip ``offset``) and repeated to ``seconds``."""
    order = clips[offset % len(clips) :] + clips[: offset % len(clips)]
    joined = np.concatenate([samples for _, samples in order])
    need = int(seconds * SAMPLE_RATE)
    return np.tile(joined, -(-need // joined.size))[:need]


def _fingerprint(modules: list[str], **options: object) -> str:
    """What a cached fixture was built from: its builder modules' source and
    the builder's options (for an int8 fixture, onnxruntime's version: its
    quantizer writes the file)."""
    import hashlib
    import importlib

    digest = hashlib.sha256()
    for name in modules:
        module = importlib.import_module(name)
        digest.update(Path(str(module.__file__)).read_bytes())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


def _int8_fingerprint(made_from: str, **options: object) -> str:
    import onnxruntime

    return _fingerprint(["trio_asr.testing.int8"], made_from=made_from, onnxruntime=onnxruntime.__version__, **options)


def _cached(directory: Path, fingerprint: str, build: Callable[[Path], object], what: str) -> Path:
    """``directory``, rebuilt by ``build(directory)`` unless it was built from
    the same ``fingerprint`` (kept in ``fixture.sha256`` beside the model):
    a fixture made by older builder code is never measured by mistake."""
    stamp = directory / "fixture.sha256"
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return directory
    print(f"writing {what} into {directory}", file=sys.stderr)
    if directory.exists():
        shutil.rmtree(directory)
    build(directory)
    stamp.write_text(fingerprint + "\n")
    return directory


_ZIPFORMER_BUILDERS = ["trio_asr.testing.onnx_graph", "trio_asr.testing.zipformer2_ctc"]
_SENSE_VOICE_BUILDERS = [
    "trio_asr.testing.onnx_graph", "trio_asr.testing.sense_voice", "trio_asr.testing.sense_voice_real_size",
]


#: what ``fixture_model`` can write
FIXTURE_KINDS = ("int8", "float32", "int8-whole")


def fixture_model(kind: str = "float32", *, cache_dir: Path = CACHE_DIR) -> Path:
    """Directory of the real-size synthetic Zipformer2-CTC model, written on
    first use and again whenever its builder code changes.

    ``kind`` is ``"float32"`` (``model.onnx``, ~100 MB), ``"int8"``
    (``model.int8.onnx``: onnxruntime dynamic quantization of the float32
    one's MatMuls, as icefall's export makes the real int8 models) or
    ``"int8-whole"`` (the whole model quantized, QUInt8, as sherpa-onnx's
    NeMo export scripts do: its convolutions become ``ConvInteger``).
    """
    if kind not in FIXTURE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FIXTURE_KINDS)}, not {kind!r}")
    from trio_asr.testing.int8 import quantize_model_dir
    from trio_asr.testing.zipformer2_ctc import REAL_SIZE, write_model

    float_print = _fingerprint(_ZIPFORMER_BUILDERS, geometry=repr(REAL_SIZE))
    float_dir = _cached(
        cache_dir / "zipformer2-ctc-real-size", float_print,
        lambda d: write_model(d, REAL_SIZE), "the real-size fixture model",
    )  # fmt: skip
    if kind == "float32":
        return float_dir
    if kind == "int8-whole":
        return _cached(
            cache_dir / "zipformer2-ctc-real-size-int8-whole",
            _int8_fingerprint(float_print, op_types=None, weight_type="QUInt8"),
            lambda d: quantize_model_dir(float_dir, d, op_types=None, weight_type="QUInt8"),
            "the whole-model int8 fixture model",
        )  # fmt: skip
    return _cached(
        cache_dir / "zipformer2-ctc-real-size-int8-matmul",
        _int8_fingerprint(float_print),
        lambda d: quantize_model_dir(float_dir, d), "the int8 fixture model",
    )  # fmt: skip


def sense_voice_fixture(kind: str = "int8", *, cache_dir: Path = CACHE_DIR) -> Path:
    """Directory of the real-size synthetic SenseVoice-Small (offline CTC, for
    the second pass), written on first use (about a minute) and again whenever
    its builder code changes: ``"float32"`` (``model.onnx``, ~950 MB) or
    ``"int8"`` (``model.int8.onnx``, ~250 MB, made as sherpa-onnx's export
    makes it: dynamic quantization of the MatMuls, QUInt8 weights)."""
    if kind not in ("float32", "int8"):
        raise ValueError(f"kind must be float32 or int8, not {kind!r}")
    from trio_asr.testing.int8 import quantize_model_dir
    from trio_asr.testing.sense_voice_real_size import write_real_size_sense_voice_model

    float_print = _fingerprint(_SENSE_VOICE_BUILDERS)
    float_dir = _cached(
        cache_dir / "sense-voice-small-real-size", float_print,
        write_real_size_sense_voice_model, "the real-size SenseVoice fixture",
    )  # fmt: skip
    if kind == "float32":
        return float_dir
    return _cached(
        cache_dir / "sense-voice-small-real-size-int8",
        _int8_fingerprint(float_print, weight_type="QUInt8"),
        lambda d: quantize_model_dir(float_dir, d, weight_type="QUInt8"), "the int8 SenseVoice fixture",
    )  # fmt: skip


def write_results(name: str, record: dict, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``record`` as ``<results_dir>/<name>.json``; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def plotting_unavailable() -> str | None:
    """One line saying that plots will be skipped and why, or None if matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed: skipping the plot (pip install -e '.[bench]' to get it)"
    return None


def write_results_and_plot(
    name: str, record: dict, plot: Callable[[Path], None], results_dir: Path = RESULTS_DIR
) -> list[Path]:
    """Write ``record`` (as :func:`write_results`), then ``plot(<results_dir>/<name>.png)``.

    The JSON is written first and the plot only when matplotlib is installed,
    so a long run's results are never lost to a missing plotting library.
    Returns the paths written.
    """
    written = [write_results(name, record, results_dir)]
    missing = plotting_unavailable()
    if missing:
        print(missing, file=sys.stderr)
        return written
    png = results_dir / f"{name}.png"
    plot(png)
    written.append(png)
    return written
