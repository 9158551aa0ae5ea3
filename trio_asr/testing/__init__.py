"""Helpers for tests and benchmarks (like :mod:`trio.testing`): synthetic
models with exactly the interface of sherpa-onnx's real exports and random
weights, so that the recognizer, sherpa-onnx and the benchmarks can load them.

- :mod:`trio_asr.testing.zipformer2_ctc`: streaming Zipformer2 CTC
  (``write_model``, ``REAL_SIZE`` for benchmark-sized ones);
- :mod:`trio_asr.testing.nemo_ctc`: NeMo streaming fast-conformer CTC
  (``write_nemo_ctc_model``);
- :mod:`trio_asr.testing.sense_voice` and
  :mod:`trio_asr.testing.nemo_ctc_offline`: the offline CTC formats,
  SenseVoice (``write_sense_voice_model``) and NeMo CTC
  (``write_nemo_ctc_offline_model``);
- :mod:`trio_asr.testing.sense_voice_real_size`: SenseVoice-Small's real
  network and size, for benchmarks (``write_real_size_sense_voice_model``);
- :mod:`trio_asr.testing.int8`: int8 versions made as the real ones are
  (``quantize_model_dir``).
- :mod:`trio_asr.testing.onnx_graph`: what the offline and NeMo builders
  share (named constants, the finished and checked model, its writing).

The modules build their models with :mod:`onnx`; nothing imports them (or
onnx) at ``import trio_asr`` time.  This package sits at the recognition
layer: it may import :mod:`trio_asr.audio` and :mod:`trio_asr.recognition`.
"""
