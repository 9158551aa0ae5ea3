"""trio-asr: streaming speech recognition over WebSockets.

The package is layered; a module may import from its own layer and the
layers below it, never from one above:

1. core: :mod:`trio_asr.audio` (PCM and WAV), :mod:`trio_asr.audio_files`
   (audio files and uploads of any format), :mod:`trio_asr.bounds`
   (validators of bounded numbers), ``_version`` and the
   compiled ``_fbank``, ``_ctc`` and ``_states``;
2. :mod:`trio_asr.recognition`: samples to text (features, models, search,
   segments, hotwords, the model service), and beside it
   :mod:`trio_asr.testing`: helpers for tests and benchmarks (synthetic
   models with the real exports' interface);
3. :mod:`trio_asr.protocol`: the WebSocket protocol and the OpenAI-compatible
   transcription API, sans-I/O;
4. :mod:`trio_asr.serving`: the server and everything it does I/O for;
5. :mod:`trio_asr.cli`: the command line.

``tests/test_layers.py`` enforces this.
"""

from trio_asr._version import __version__

__all__ = ["__version__"]
