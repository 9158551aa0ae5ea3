"""What one connection may ask for: the protocol's limits, and their bounds.

:class:`ProtocolLimits` is enforced by the protocol core before any audio is
accepted (:mod:`trio_asr.protocol.start` for the ``start`` message,
:mod:`trio_asr.protocol.connection` for frames and streams).  Its defaults
are the server's defaults; the server's settings take them from here.
"""

from __future__ import annotations

import attrs

from trio_asr.audio import WAV_MAX_DATA_BYTES
from trio_asr.bounds import between, positive
from trio_asr.recognition.endpoint import EndpointRules

__all__ = ["DEFAULT_SAMPLE_RATE", "STANDARD_SAMPLE_RATES", "SUPPORTED_BITS_PER_SAMPLE", "ProtocolLimits"]

DEFAULT_SAMPLE_RATE = 16000
SUPPORTED_BITS_PER_SAMPLE = 16
#: rates the server resamples from; arbitrary integers are refused because
#: a rate like 8001 Hz has no practical polyphase ratio to the model's rate
STANDARD_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000})


@attrs.frozen
class ProtocolLimits:
    """What one connection may ask for; enforced before any audio is accepted."""

    nbest_max: int = attrs.field(default=10, validator=between(1, 100))
    max_message_bytes: int = attrs.field(default=1 << 20, validator=positive)
    max_stream_seconds: float = attrs.field(default=3600.0, validator=positive)
    max_name_length: int = attrs.field(default=256, validator=positive)
    max_channels: int = attrs.field(default=8, validator=positive)
    sample_rates: frozenset[int] = attrs.field(default=STANDARD_SAMPLE_RATES, converter=frozenset)
    #: PCM bytes per stream; the default is what a WAV file can hold
    max_stream_bytes: int = attrs.field(default=WAV_MAX_DATA_BYTES, validator=positive)
    #: the endpoint rules a ``start`` without (some of) them gets
    endpoint: EndpointRules = attrs.field(factory=EndpointRules)
    #: phrases a stream's ``hotwords`` field may hold (0: the field is refused)
    max_stream_hotwords: int = attrs.field(default=100, validator=between(0, 1000))
