"""Acoustic models: one module per ONNX format, chosen by :func:`load_model`.

Adding a format: write ``trio_asr/recognition/model/<format>.py`` with a ``matches(session)``
predicate and an :class:`AcousticModel` subclass taking ``(session, tokens)``,
then add one entry to ``_FORMATS``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from trio_asr.recognition.model import nemo_ctc, quantization, zipformer2_ctc
from trio_asr.recognition.model.base import (
    AcousticModel,
    ModelError,
    ModelState,
    ModelStream,
    is_batch_invariant,
    make_session_options,
)

if TYPE_CHECKING:
    from trio_asr.recognition.tokens import TokenTable

__all__ = [
    "AcousticModel",
    "ModelError",
    "ModelState",
    "ModelStream",
    "is_batch_invariant",
    "find_model_file",
    "load_model",
    "make_session_options",
]

log = logging.getLogger("trio_asr.model")

# (name, module) in detection order; each module has matches() and a model class.
_FORMATS = (
    ("zipformer2-ctc", zipformer2_ctc, zipformer2_ctc.Zipformer2CtcModel),
    ("nemo-ctc", nemo_ctc, nemo_ctc.NemoCtcModel),
)

# sherpa-onnx release archives name the file model.int8.onnx or model.onnx;
# older ones ctc-epoch-*-chunk-*.onnx, with an .int8 twin.
_PREFERRED = ("model.int8.onnx", "model.onnx")


def find_model_file(model_dir: Path) -> Path:
    """The ONNX file to load from ``model_dir``: ``model.int8.onnx``, else
    ``model.onnx``, else the only ``*.onnx`` (an ``*.int8.onnx`` preferred)."""
    for name in _PREFERRED:
        if (model_dir / name).is_file():
            return model_dir / name
    candidates = sorted(model_dir.glob("*.onnx"))
    int8 = [p for p in candidates if p.name.endswith(".int8.onnx")]
    for group in (int8, candidates):
        if len(group) == 1:
            return group[0]
        if len(group) > 1:
            names = ", ".join(p.name for p in group)
            raise ModelError(
                f"{model_dir} holds several ONNX files ({names}); "
                f"name the one to use model.onnx or model.int8.onnx"
            )
    raise ModelError(f"no model file (model.int8.onnx, model.onnx or *.onnx) in {model_dir}")


def _read_tokens(path: Path) -> TokenTable:
    from trio_asr.recognition.tokens import TokenTable

    return TokenTable.from_file(path)


def load_model(
    model_dir: str | os.PathLike[str],
    *,
    threads: int = 1,
    session_options: ort.SessionOptions | None = None,
    per_item_quantization: bool = True,
) -> AcousticModel:
    """Load the model in ``model_dir`` (its ONNX file and ``tokens.txt``).

    ``model_dir`` may also be the ONNX file itself, to load that one of
    several: the ``tokens.txt`` beside it goes with it.

    The format is detected from the ONNX inputs, outputs and metadata; every
    dimension comes from the model itself.  Raises :class:`ModelError` naming
    what is missing or unsupported.  ``session_options`` (see
    :func:`make_session_options`) overrides ``threads``.

    A dynamically quantized model (the usual int8 export) is rewritten so that
    each batch item is quantized on its own (see
    :mod:`trio_asr.recognition.model.quantization`): a stream's result is then the same
    in any batch as alone, as with a float model.  ``per_item_quantization=False``
    loads the file as it is.
    """
    model_dir = Path(model_dir)
    named: Path | None = None
    if model_dir.suffix == ".onnx" and model_dir.is_file():
        model_dir, named = model_dir.parent, model_dir
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist")
    tokens_path = model_dir / "tokens.txt"
    if not tokens_path.is_file():
        raise ModelError(f"tokens.txt is missing from {model_dir}")
    tokens = _read_tokens(tokens_path)
    model_file = named or find_model_file(model_dir)
    if session_options is None:
        session_options = make_session_options(threads=threads)
    if per_item_quantization and quantization.is_dynamically_quantized(model_file):
        return _load_per_item(model_file, tokens, session_options)
    return _detect(_session(model_file, model_file, session_options), model_file, tokens)


def _session(
    model: bytes | Path, model_file: Path, options: ort.SessionOptions, disabled_optimizers: list[str] | None = None
) -> ort.InferenceSession:
    """A session on the ONNX file ``model`` or on serialized bytes.  A session
    made from bytes keeps them as long as it lives (onnxruntime's Python
    binding holds them), so one that serves loads from a file: see
    :func:`_lasting_session`."""
    try:
        return ort.InferenceSession(
            str(model) if isinstance(model, Path) else model, sess_options=options,
            providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers,
        )
    except Exception as exc:  # onnxruntime raises its own, undocumented classes
        raise ModelError(f"onnxruntime cannot load {model_file}: {exc}") from exc


def _lasting_session(
    data: bytes, model_file: Path, options: ort.SessionOptions, disabled_optimizers: list[str] | None = None
) -> ort.InferenceSession:
    """A session on serialized ``data`` that does not keep a copy of them
    alive: loaded from a temporary file (bytes, if none can be written).
    The file is gone once loaded, so onnxruntime cannot rebuild the session
    (``set_providers``); nothing here asks it to."""
    try:
        with tempfile.TemporaryDirectory(prefix="trio-asr-", ignore_cleanup_errors=True) as directory:
            path = Path(directory) / model_file.name
            path.write_bytes(data)
            return _session(path, model_file, options, disabled_optimizers)
    except OSError as exc:
        log.debug("no temporary file for %s (%s): the session keeps its bytes", model_file, exc)
        return _session(data, model_file, options, disabled_optimizers)


def _detect(session: ort.InferenceSession, model_file: Path, tokens: TokenTable) -> AcousticModel:
    for _name, module, cls in _FORMATS:
        if module.matches(session):
            return cls(session, tokens)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    supported = ", ".join(name for name, _, _ in _FORMATS)
    raise ModelError(
        f"{model_file} is not a supported model (supported: {supported}); "
        f"its inputs are {inputs}, outputs {outputs}"
    )


def _load_per_item(model_file: Path, tokens: TokenTable, options: ort.SessionOptions) -> AcousticModel:
    """Load a dynamically quantized model rewritten for per-item quantization;
    batches of one run on the file as it is (identical for one stream, faster)."""
    quick = make_session_options(optimization="basic")
    original = _detect(_session(model_file, model_file, options), model_file, tokens)
    try:  # with the external data files beside it, if any: the rewrite is loaded from bytes
        parsed = onnx.load(str(model_file))
    except Exception as exc:  # onnx raises protobuf's and its own classes
        raise ModelError(f"cannot read {model_file} as ONNX: {exc}") from exc
    rng = np.random.default_rng(0)

    def feed(batch: int) -> dict[str, np.ndarray]:
        features = rng.standard_normal((batch, original.chunk_frames, original.feature_dim))
        return original.feed(features.astype(np.float32), [original.initial_state()] * batch)

    rewritten, skipped = quantization.rewrite_model(
        parsed, feed, lambda probe: _session(probe, model_file, quick)
    )
    del parsed
    if skipped:
        log.warning(
            "%s: %d quantized tensors cannot be quantized per stream (%s); "
            "its results depend on the batch", model_file, len(skipped), ", ".join(skipped[:3]),
        )
    # The rewrite fuses what it can itself (quantized_ops.fuse_scaling);
    # onnxruntime's fusion of what is left would multiply the scales in another
    # order than the original's kernels: last-bit differences, which a later
    # quantizer can turn into a step.
    session = _lasting_session(rewritten, model_file, options, disabled_optimizers=["MatMulIntegerToFloatFusion"])
    model = _detect(session, model_file, tokens)
    model.set_single_stream_session(original._session)
    model.batch_invariant = not skipped
    return model
