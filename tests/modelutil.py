"""Model-level helpers for the tests: run streams by hand, batched or not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
