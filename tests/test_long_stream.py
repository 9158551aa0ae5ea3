"""A 60-minute stream at full speed on the tiny fixture, in a few seconds.

The model's log-probs of a minute of speech and pauses are computed once and
replayed sixty times through the stepped interface (as the batched server
drives a stream after the model service), with a partial result after every
chunk.  Checked: the open segment never outgrows rule 3, so the search and
the per-partial work stay bounded; memory grows only with the transcript
kept (segment texts and their times), at the same rate in the second half
hour as in the first; the full text is the segments' texts.
"""

from __future__ import annotations

import functools
import gc
import tracemalloc

import numpy as np
import pytest
from paths import SPEECH_FILES

from trio_asr.audio import read_wav
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.segments import join_texts

RULES = EndpointRules(silence_without_text=2.4, silence_after_text=1.2, max_segment=5.0)


def minute_of_log_probs(model) -> np.ndarray:
    rng = np.random.default_rng(5)
    parts = []
    for path in SPEECH_FILES:
        parts += [read_wav(path)[0][:, 0], (rng.standard_normal(24000) * 0.003).astype(np.float32)]
    audio = np.resize(np.concatenate(parts), 60 * 16000)
    stream = Recognizer(model).create_stream()
    stream.accept_waveform(audio)
    return stream.model_stream.decode_ready_chunks()


def test_an_hour_at_full_speed_keeps_work_and_memory_bounded(zipformer2_model_dir):
    model = load_model(zipformer2_model_dir)
    minute = minute_of_log_probs(model)
    chunk = model.chunk_shift // model.subsampling  # output frames per model chunk
    stream = Recognizer(model, beam=4, endpoint=RULES).create_stream()
    longest_open = 0.0
    memory, texts = [], []
    tracemalloc.start()
    try:
        for m in range(60):
            if m in (0, 30, 59):
                gc.collect()
                memory.append(tracemalloc.get_traced_memory()[0])
                texts.append(len(stream.result().text))
            for start in range(0, len(minute), chunk):
                stream.accept_log_probs(minute[start : start + chunk])
                open_segment = stream.result().open
                longest_open = max(longest_open, open_segment.end - open_segment.start)
    finally:
        tracemalloc.stop()
    result = stream.result()

    seconds = 60 * len(minute) * model.frame_shift_s
    assert seconds > 59 * 60 and result.open.end == pytest.approx(seconds)
    assert longest_open <= RULES.max_segment + model.frame_shift_s
    assert len(result.segments) >= seconds / (RULES.max_segment + model.frame_shift_s) - 1
    assert result.text == functools.reduce(join_texts, [s.text for s in result.segments] + [result.open.text])

    first_half = memory[1] - memory[0]
    second_half = memory[2] - memory[1]
    chars_first, chars_second = texts[1] - texts[0], texts[2] - texts[1]
    # what grows is the kept transcript (text, word and token times)...
    assert second_half <= 400 * chars_second, (second_half, chars_second)
    # ... at the same rate late in the stream as early on
    assert second_half / chars_second <= 1.3 * first_half / chars_first
