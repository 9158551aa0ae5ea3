"""Hardening II (issue items 3, 5, 6, 7): each test failed before its fix.

3. client numbers too large for a float are bad input, never a 1011;
5. a frame far over ``--max-message-bytes`` gets the JSON error reply too;
6. ``trio_asr_close_codes_total`` counts the code the server sent;
7. ``HEAD`` is answered like ``GET``, without the body.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio_websocket
from serverutil import recv_json, replies_until_close, start_msg, start_server, ws_url

from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.messages import ErrorReply
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.hotwords import HotwordError, hotwords_from_json
from trio_asr.serving.config import ConfigError, load_config

HUGE = "1" + "0" * 400  # a JSON integer beyond any float


# ------------------------------------------------------------ 3: huge numbers


def error_of(text: str) -> ErrorReply:
    [event] = ConnectionProtocol().receive_text(text)
    assert isinstance(event, ErrorReply), event
    return event


@pytest.mark.parametrize("score", [HUGE, "-" + HUGE])
def test_a_huge_hotword_score_is_1007_naming_the_entry(score: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "hotwords": ["北京", ["张伟", %s]]}' % score)
    assert error.code == 1007
    assert error.message.startswith('field "hotwords": the score of \'张伟\' must be above 0 and at most 10')
    assert len(error.message) < 200


@pytest.mark.parametrize(
    "field, code, message",
    [
        ("nbest", 1008, '"nbest" must be between 1 and 10'),
        ("sampleRate", 1003, '"sampleRate" 1000'),
        ("channels", 1003, '"channels" must be between 1 and 8'),
        ("bitsPerSample", 1003, '"bitsPerSample" 1000'),
    ],
)
def test_huge_integer_fields_get_their_code_and_a_short_message(field: str, code: int, message: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "%s": %s}' % (field, HUGE))
    assert error.code == code and error.message.startswith(message)
    assert len(error.message) < 200, "the error reply echoes at most an excerpt of the number"


@pytest.mark.parametrize("key", ["silenceWithoutText", "silenceAfterText", "maxSegment"])
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1" + "0" * 299])
def test_huge_endpoint_values_are_1008(key: str, value: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "endpoint": {"%s": %s}}' % (key, value))
    assert error.code == 1008 and error.message.startswith(f'"endpoint" {key} ')
    assert len(error.message) < 200


def test_the_parts_refuse_huge_integers_as_values_out_of_bounds() -> None:
    with pytest.raises(HotwordError, match="must be above 0"):
        hotwords_from_json([["张伟", 10**400]], limit=5)
    with pytest.raises(HotwordError, match="too long to show"):
        hotwords_from_json([["张伟", 10**5000]], limit=5)
    with pytest.raises(ValueError, match="max_segment must be between 1 and 120"):
        EndpointRules(max_segment=10**400)


@pytest.mark.parametrize("key", ["idle_timeout", "nbest_max", "port", "hotwords_score", "endpoint_max_segment"])
def test_a_huge_integer_in_the_config_file_is_a_config_error(tmp_path: Path, key: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(f"{key} = {HUGE}\n")
    with pytest.raises(ConfigError, match=f"{key} is out of range"):
        load_config(path)
    path.write_text(f"{key} = {'1' * 5000}\n")  # beyond what Python parses into an int
    with pytest.raises(ConfigError, match="4300 digits"):
        load_config(path)
    with pytest.raises(ConfigError, match=f"{key} is out of range"):
        load_config(None, {key: 10**400})  # the same value as a flag


async def test_a_huge_hotword_score_is_refused_by_a_server_with_1007(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg().replace('"nbest": 1', f'"hotwords": [["张伟", {HUGE}]]'))
        replies, code = await replies_until_close(ws)
    assert code == 1007
    assert replies == [{"status": "error", "signal": "start", "message": replies[0]["message"]}]
    assert "the score of '张伟'" in replies[0]["message"]
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:  # the server goes on
        await ws.send_message(start_msg())
        assert (await recv_json(ws))["signal"] == "server_ready"
