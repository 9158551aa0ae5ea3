"""The ``start`` message: what a client may ask for, and how it is checked.

:func:`parse_start` turns the JSON object of a ``start`` into a
:class:`~trio_asr.protocol.messages.StartStream` or raises :class:`BadStart` with the
close code the protocol prescribes (1007 for a missing or ill-typed field,
1008 for a value beyond the server's :class:`ProtocolLimits`, 1003 for an
audio format the server cannot take).

Additions to ``start`` (optional; a client that sends none gets exactly the
spec's replies plus additive fields, see :mod:`trio_asr.protocol.messages`):

* ``hotwords``: a list of phrases, each a
  string or a ``[phrase, score]`` pair (:func:`trio_asr.recognition.hotwords.hotwords_from_json`),
  at most ``max_stream_hotwords`` of them (1008 beyond); anything malformed
  is 1007.
* ``endpoint``: an object with any of ``silenceWithoutText``,
  ``silenceAfterText`` (seconds, or ``null`` to switch that rule off) and
  ``maxSegment`` (seconds); missing keys take the server's rules.  Not an
  object, an unknown key or a non-number is 1007; a value out of bounds
  (:class:`trio_asr.recognition.endpoint.EndpointRules`) is 1008.
* ``compact``: ``true`` for replies whose ``result`` is the open segment only.
* ``secondPass``: ``false`` for first-pass segments even when the server has
  a second pass (see :mod:`trio_asr.serving.second_pass`); not a boolean is 1007.

A new field is read here into :class:`~trio_asr.protocol.messages.StartStream`
(into its ``options`` when recognition uses it) and used where it matters;
nothing in between passes it on by hand.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from trio_asr.protocol.limits import DEFAULT_SAMPLE_RATE, SUPPORTED_BITS_PER_SAMPLE, ProtocolLimits
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.recognition.hotwords import HotwordError, hotwords_from_json
from trio_asr.protocol.messages import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    StartStream,
)

__all__ = ["BadStart", "excerpt", "parse_start"]

#: ``start``'s ``endpoint`` keys -> EndpointRules fields
_ENDPOINT_KEYS = {
    "silenceWithoutText": "silence_without_text",
    "silenceAfterText": "silence_after_text",
    "maxSegment": "max_segment",
}


class BadStart(Exception):
    """A ``start`` the server refuses; ``code`` is the close code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def excerpt(value: object, limit: int = 40) -> str:
    """``value`` as JSON for an error message, cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_start(message: dict[str, Any], limits: ProtocolLimits) -> StartStream:
    """The stream a ``start`` message asks for; raises :class:`BadStart`."""
    name = message.get("name")
    if not isinstance(name, str):
        reason = "missing" if "name" not in message else "not a string"
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "name" is {reason}')
    if len(name) > limits.max_name_length:
        raise BadStart(CLOSE_POLICY_VIOLATION, f'"name" longer than {limits.max_name_length} characters')
    nbest = _int_field(message, "nbest", 1)
    rate = _int_field(message, "sampleRate", DEFAULT_SAMPLE_RATE)
    bits = _int_field(message, "bitsPerSample", SUPPORTED_BITS_PER_SAMPLE)
    channels = _int_field(message, "channels", 1)
    if not 1 <= nbest <= limits.nbest_max:
        raise BadStart(CLOSE_POLICY_VIOLATION, f'"nbest" must be between 1 and {limits.nbest_max}, got {excerpt(nbest)}')
    if bits != SUPPORTED_BITS_PER_SAMPLE:
        raise BadStart(CLOSE_UNSUPPORTED_DATA, f'"bitsPerSample" {excerpt(bits)} is not supported (only 16)')
    if not 1 <= channels <= limits.max_channels:
        raise BadStart(
            CLOSE_UNSUPPORTED_DATA, f'"channels" must be between 1 and {limits.max_channels}, got {excerpt(channels)}'
        )
    if rate not in limits.sample_rates:
        rates = ", ".join(map(str, sorted(limits.sample_rates)))
        raise BadStart(CLOSE_UNSUPPORTED_DATA, f'"sampleRate" {excerpt(rate)} is not supported (one of {rates})')
    hotwords = message.get("hotwords", [])
    if isinstance(hotwords, list) and len(hotwords) > limits.max_stream_hotwords:
        raise BadStart(
            CLOSE_POLICY_VIOLATION,
            f'"hotwords" holds {len(hotwords)} phrases, at most {limits.max_stream_hotwords} are allowed',
        )
    try:
        phrases = hotwords_from_json(hotwords)
    except HotwordError as exc:
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "hotwords": {exc}') from None
    compact = message.get("compact", False)
    if not isinstance(compact, bool):
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "compact" must be true or false, got {excerpt(compact)}')
    second_pass = message.get("secondPass", True)
    if not isinstance(second_pass, bool):
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "secondPass" must be true or false, got {excerpt(second_pass)}')
    options = StreamOptions(nbest=nbest, sample_rate=rate, hotwords=phrases, endpoint=_endpoint_field(message, limits))
    return StartStream(
        name=name, channels=channels, bits_per_sample=bits, options=options, compact=compact, second_pass=second_pass
    )


def _endpoint_field(message: dict[str, Any], limits: ProtocolLimits) -> EndpointRules | None:
    if "endpoint" not in message:
        return None
    given = message["endpoint"]
    if not isinstance(given, dict):
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "endpoint" must be an object, got {excerpt(given)}')
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if key not in _ENDPOINT_KEYS:
            known = ", ".join(_ENDPOINT_KEYS)
            raise BadStart(CLOSE_INVALID_PAYLOAD, f'unknown "endpoint" key {excerpt(key)} (known: {known})')
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number and not (value is None and key != "maxSegment"):
            raise BadStart(
                CLOSE_INVALID_PAYLOAD, f'"endpoint" {key} must be a number of seconds, got {excerpt(value)}'
            )
        if number and not -1e300 < value < 1e300:
            raise BadStart(CLOSE_POLICY_VIOLATION, f'"endpoint" {key} is out of bounds, got {excerpt(value)}')
        changes[_ENDPOINT_KEYS[key]] = value
    try:
        return attrs.evolve(limits.endpoint, **changes)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        for key, field in _ENDPOINT_KEYS.items():
            reason = reason.replace(field, key)
        raise BadStart(CLOSE_POLICY_VIOLATION, f'"endpoint" {reason}') from None


def _int_field(message: dict[str, Any], key: str, default: int) -> int:
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):  # JSON true/false is never an integer
        raise BadStart(CLOSE_INVALID_PAYLOAD, f'field "{key}" must be an integer, got {excerpt(value)}')
    return value
