"""A ``start``'s fields reach the parts that use them whole: what the
protocol core parsed is what the recognizer is asked for and what the
stream's replies are built from, with nothing in between passing fields on
by hand.  So a new ``start`` field touches the parser, the message and the
part that uses it only; a layer that rebuilt the options field by field
would drop it, and this test would fail."""

from __future__ import annotations

from pathlib import Path

import trio
import trio_websocket

from serverutil import CountingRecognizer, end_msg, recv_json, start_msg, start_server, ws_url
from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.protocol.messages import StartStream
from trio_asr.recognition.stream_options import StreamOptions

FIELDS = {"nbest": 3, "sampleRate": 8000, "endpoint": {"silenceAfterText": 0.5, "maxSegment": 7}, "compact": True}


class RecordingRecognizer(CountingRecognizer):
    """Records the options each stream was created with."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[StreamOptions] = []

    def create_stream(self, options: StreamOptions):  # type: ignore[no-untyped-def]
        self.options.append(options)
        return super().create_stream(options)


async def test_the_parsed_start_reaches_the_recognizer_whole(nursery: trio.Nursery, tmp_path: Path) -> None:
    recognizer = RecordingRecognizer()
    server = await start_server(nursery, tmp_path, recognizer)
    message = start_msg("whole.wav", **FIELDS)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(message)
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(b"\x00\x01" * 800)
        partial = await recv_json(ws)
        await ws.send_message(end_msg("whole.wav"))
        final = await recv_json(ws)
    [parsed] = ConnectionProtocol(server.config.protocol_limits()).receive_text(message)
    assert isinstance(parsed, StartStream)
    assert recognizer.options == [parsed.options]
    assert parsed.options.endpoint is not None and parsed.options.endpoint.max_segment == 7
    # the replies are built from the same start: its n-best and name
    assert len(partial["nbest"]) == len(final["nbest"]) == 3 and final["name"] == "whole.wav"


def test_the_server_limits_fill_what_a_start_leaves_out() -> None:
    limits = ProtocolLimits()
    [parsed] = ConnectionProtocol(limits).receive_text(start_msg("plain.wav"))
    assert isinstance(parsed, StartStream)
    assert parsed.options == StreamOptions(nbest=1, sample_rate=16000, hotwords=(), endpoint=None)
