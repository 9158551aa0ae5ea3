"""What one stream asks of recognition: the options a client's ``start`` carries down."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.hotwords import Hotword

__all__ = ["StreamOptions"]


def _as_tuple(hotwords: Iterable[Hotword]) -> tuple[Hotword, ...]:
    return tuple(hotwords)


@attrs.frozen
class StreamOptions:
    """What one stream asks of its recognizer.

    ``nbest`` alternatives per result; ``sample_rate`` of the audio it will
    be given (None: the model's); ``hotwords`` of its own, added to the
    recognizer's; ``endpoint`` rules that cut it into segments (None: the
    recognizer's)."""

    nbest: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    sample_rate: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.gt(0)))
    hotwords: tuple[Hotword, ...] = attrs.field(default=(), converter=_as_tuple)
    endpoint: EndpointRules | None = None
