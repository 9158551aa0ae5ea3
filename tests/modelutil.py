"""Model-level helpers for the tests: run streams by hand, batched or not;
edit a model file's metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from trio_asr.recognition.model import AcousticModel, ModelStream


def finalize(stream: ModelStream) -> np.ndarray:
    """End of input: run the remaining chunks (the last one padded)."""
    stream.input_finished()
    return stream.decode_ready_chunks()


def decode_streams(model: AcousticModel, streams: Sequence[ModelStream]) -> list[np.ndarray]:
    """Run all ready chunks of many streams, one chunk per stream in each
    model call (what the model service does); each stream's log-probs (t, V)."""
    outputs: list[list[np.ndarray]] = [[] for _ in streams]
    while True:
        ready = [(i, c) for i, s in enumerate(streams) if (c := s.next_chunk()) is not None]
        if not ready:
            break
        log_probs, states = model.run(np.stack([c for _, c in ready]), [streams[i].state for i, _ in ready])
        for (i, _), lp, state in zip(ready, log_probs, states):
            streams[i].advance(state)
            outputs[i].append(lp)
    return [np.concatenate(o) if o else np.zeros((0, model.vocab_size), np.float32) for o in outputs]


def edit_metadata(path: Path, **changes: str | None) -> None:
    """Set (or, with None, remove) metadata entries of the ONNX file at ``path``."""
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(path))
