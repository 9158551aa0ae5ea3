"""What one utterance asks of offline recognition."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from trio_asr.recognition.hotwords import Hotword

__all__ = ["OfflineOptions"]


def _as_tuple(hotwords: Iterable[Hotword]) -> tuple[Hotword, ...]:
    return tuple(hotwords)


@attrs.frozen
class OfflineOptions:
    """What one utterance asks of its :class:`~trio_asr.recognition.offline.recognizer.OfflineRecognizer`.

    ``nbest`` alternatives; ``sample_rate`` of its samples (None: the
    model's); ``hotwords`` of its own, added to the recognizer's; SenseVoice's
    ``language`` (``"auto"``, ``"zh"``, ``"en"``, ``"yue"``, ``"ja"``,
    ``"ko"``) and ``use_itn`` (punctuation and inverse text normalisation),
    None for the recognizer's; ``offset_s``: where the utterance starts in a
    longer stream, added to every time of its result (a second pass over a
    segment gives the segment's times)."""

    nbest: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    sample_rate: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.gt(0)))
    hotwords: tuple[Hotword, ...] = attrs.field(default=(), converter=_as_tuple)
    language: str | None = None
    use_itn: bool | None = None
    offset_s: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
