"""Offline (non-streaming) CTC models: one module per ONNX format, chosen by
:func:`load_offline_model`, and the recognizer that decodes whole utterances
with them (:mod:`~trio_asr.recognition.offline.recognizer`).

Formats: SenseVoice (:mod:`~trio_asr.recognition.offline.sense_voice`) and
NeMo CTC (:mod:`~trio_asr.recognition.offline.nemo_ctc`), as sherpa-onnx
exports them.  Adding one: a module with a ``matches(session)`` predicate and
an :class:`OfflineModel` subclass taking ``(session, tokens)``, and an entry
in ``_FORMATS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from trio_asr.recognition.model import find_model_file, make_session_options
from trio_asr.recognition.model.base import ModelError
from trio_asr.recognition.model.quantization import is_dynamically_quantized
from trio_asr.recognition.offline import nemo_ctc, sense_voice
from trio_asr.recognition.offline.base import Conditioning, OfflineModel, UtteranceTags
from trio_asr.recognition.offline.options import OfflineOptions
from trio_asr.recognition.offline.recognizer import (
    OfflineRecognizer,
    OfflineResult,
    PreparedUtterance,
    shift_times,
)
from trio_asr.recognition.tokens import TokenTable

__all__ = [
    "Conditioning",
    "ModelError",
    "OfflineModel",
    "OfflineOptions",
    "OfflineRecognizer",
    "OfflineResult",
    "PreparedUtterance",
    "UtteranceTags",
    "is_offline_model",
    "load_offline_model",
    "shift_times",
]

# (name, matches, class) in detection order
_Loader = Callable[[ort.InferenceSession, TokenTable], OfflineModel]
_FORMATS: tuple[tuple[str, Callable[[ort.InferenceSession], bool], _Loader], ...] = (
    ("sense-voice", sense_voice.matches, sense_voice.SenseVoiceModel),
    ("nemo-ctc", nemo_ctc.matches, nemo_ctc.NemoCtcOfflineModel),
)


def _split(model_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(directory, ONNX file) of a model directory or of an ONNX file in one."""
    path = Path(model_dir)
    if path.suffix == ".onnx" and path.is_file():
        return path.parent, path
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    return path, find_model_file(path)


def _format(session: ort.InferenceSession) -> _Loader | None:
    return next((cls for _name, matches, cls in _FORMATS if matches(session)), None)


def is_offline_model(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir`` (or an ONNX file in one) holds a model of an
    offline format: the file is opened by onnxruntime, unoptimised, to read
    its inputs and metadata (a second or so for a large model)."""
    try:
        _, model_file = _split(model_dir)
        options = make_session_options(optimization="disable")
        session = ort.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception:  # a missing file, or not an ONNX model onnxruntime can load
        return False
    return _format(session) is not None


def load_offline_model(
    model_dir: str | os.PathLike[str],
    *,
    threads: int = 1,
    session_options: ort.SessionOptions | None = None,
) -> OfflineModel:
    """Load the offline model in ``model_dir`` (its ONNX file, chosen as
    :func:`~trio_asr.recognition.model.find_model_file` chooses, and
    ``tokens.txt``), or the ONNX file ``model_dir`` names with the
    ``tokens.txt`` beside it.

    The format is detected from the ONNX inputs and metadata; every dimension
    comes from the model.  :class:`ModelError` names what is missing or
    unsupported.  ``session_options`` overrides ``threads``.  A dynamically
    quantized (int8) model is loaded as it is: it is not batch invariant (see
    :attr:`OfflineModel.batch_invariant`), and the recognizer runs its
    utterances one at a time.
    """
    directory, model_file = _split(model_dir)
    tokens_path = directory / "tokens.txt"
    if not tokens_path.is_file():
        raise ModelError(f"tokens.txt is missing from {directory}")
    tokens = TokenTable.from_file(tokens_path)
    if session_options is None:
        session_options = make_session_options(threads=threads)
    try:  # from the file: a session made from bytes would keep them alive
        session = ort.InferenceSession(
            str(model_file), sess_options=session_options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own, undocumented classes
        raise ModelError(f"onnxruntime cannot load {model_file}: {exc}") from exc
    cls = _format(session)
    if cls is not None:
        model = cls(session, tokens)
        model.batch_invariant = not is_dynamically_quantized(model_file)
        return model
    inputs = [i.name for i in session.get_inputs()]
    supported = ", ".join(name for name, _, _ in _FORMATS)
    raise ModelError(
        f"{model_file} is not a supported offline model (supported: {supported}); its inputs are {inputs}"
    )
