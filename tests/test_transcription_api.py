"""OpenAI's transcription API, sans-I/O (trio_asr.protocol.transcription_api
and transcripts): every form field's checks, every response format read
back (by the openai package's own models where it is installed), the
streamed events, and whole requests made by the openai client itself,
answered through an in-memory transport."""

from __future__ import annotations

import json
import re

import pytest

from trio_asr.protocol.multipart import FormPart, form_boundary, parse_form
from trio_asr.protocol.transcription_api import (
    RESPONSE_FORMATS,
    ApiError,
    Transcript,
    TranscriptionRequest,
    TranscriptSegment,
    TranscriptWord,
    error_event,
    parse_transcription_form,
    render_transcript,
    sse_event,
    text_delta_event,
    text_done_event,
    transcript_from_result,
)
from trio_asr.recognition.hotwords import Hotword
from trio_asr.recognition.segments import RecognitionResult, Segment, TokenTime

AUDIO = b"RIFF\x24\x00\x00\x00WAVE"
LIMITS = {"max_nbest": 5, "max_hotwords": 3}


def form(**fields: str | bytes | list[str]) -> list[FormPart]:
    parts = [FormPart("file", AUDIO, "talk.wav", "audio/wav")]
    for name, value in fields.items():
        name = name.replace("__", "[]")  # timestamp_granularities__ -> timestamp_granularities[]
        for item in value if isinstance(value, list) else [value]:
            parts.append(FormPart(name, item if isinstance(item, bytes) else item.encode()))
    return parts


def parse(parts: list[FormPart], **limits: int) -> TranscriptionRequest:
    return parse_transcription_form(parts, **(LIMITS | limits))


def refusal(parts: list[FormPart], **limits: int) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(parts, **limits)
    error = info.value
    assert error.status == 400 and error.type == "invalid_request_error" and error.code is None
    assert "\n" not in error.message and str(error) == error.message
    return error


def test_a_file_alone_takes_the_defaults():
    assert parse(form()) == TranscriptionRequest(
        audio=AUDIO, filename="talk.wav", model="", language=None, prompt=None, response_format="json",
        word_times=False, segment_times=True, temperature=None, hotwords=(), nbest=1, stream=False,
    )  # fmt: skip
    assert parse([FormPart("file", AUDIO)]).filename == "upload"


def test_every_field_is_read():
    request = parse(
        form(
            model="whisper-1", language=" EN ", prompt="Names: Ada", response_format="verbose_json",
            timestamp_granularities__=["word", "segment"], temperature="0.2", nbest="3", stream="false",
            hotwords='["trio asr", ["Ada Lovelace", 4]]', unknown="ignored", include__="logprobs",
        )
    )  # fmt: skip
    assert request == TranscriptionRequest(
        audio=AUDIO, filename="talk.wav", model="whisper-1", language="en", prompt="Names: Ada",
        response_format="verbose_json", word_times=True, segment_times=True, temperature=0.2,
        hotwords=(Hotword("trio asr"), Hotword("Ada Lovelace", 4.0)), nbest=3, stream=False,
    )  # fmt: skip
    only_words = parse(form(timestamp_granularities="word"))
    assert (only_words.word_times, only_words.segment_times) == (True, False)
    assert parse(form(stream="TRUE", response_format="text")).stream
    for value in ("auto", "yue", "zh-tw"):
        assert parse(form(language=value)).language == value
    for empty in ("language", "temperature", "hotwords", "nbest", "stream", "response_format"):
        assert parse(form(**{empty: ""})) == parse(form())


@pytest.mark.parametrize(
    ("parts", "param", "message"),
    [
        ([FormPart("model", b"whisper-1")], "file", "'file' is required"),
        ([FormPart("file", b"", "a.wav")], "file", "'file' is empty (0 bytes)"),
        (form(response_format="diarized_json"), "response_format", "one of json, text, srt, vtt, verbose_json"),
        (form(response_format="JSON"), "response_format", 'got "JSON"'),
        (form(language="english!"), "language", "a language code such as en or zh"),
        (form(language="x" * 17), "language", "a language code"),
        (form(language="e n"), "language", "a language code"),
        (form(timestamp_granularities__=["word", "sentence"]), "timestamp_granularities[]", 'got "sentence"'),
        (form(temperature="hot"), "temperature", "from 0 to 1, got \"hot\""),
        (form(temperature="1.5"), "temperature", "from 0 to 1"),
        (form(temperature="nan"), "temperature", "from 0 to 1"),
        (form(temperature="-0.1"), "temperature", "from 0 to 1"),
        (form(nbest="0"), "nbest", "an integer from 1 to 5, got \"0\""),
        (form(nbest="6"), "nbest", "from 1 to 5"),
        (form(nbest="2.0"), "nbest", "from 1 to 5"),
        (form(nbest="\N{SUPERSCRIPT TWO}"), "nbest", "from 1 to 5"),
        (form(nbest="9" * 5000), "nbest", "from 1 to 5"),
        (form(stream="yes"), "stream", "'stream' must be true or false"),
        (form(stream="true", response_format="verbose_json"), "stream", "only for response_format json or text"),
        (form(stream="true", response_format="srt"), "stream", "not srt"),
        (form(hotwords="trio asr"), "hotwords", "not JSON"),
        (form(hotwords="[" * 100_000), "hotwords", "longer than 65536 bytes"),
        (form(hotwords="[" * 60_000), "hotwords", "not JSON"),
        (form(hotwords='{"trio": 1}'), "hotwords", "hotwords must be a list"),
        (form(hotwords='["a", "b", "c", "d"]'), "hotwords", "holds 4 phrases, at most 3 are allowed"),
        (form(hotwords='[["a", 11]]'), "hotwords", "must be above 0 and at most 10"),
        (form(hotwords='["a", "a"]'), "hotwords", "appears twice"),
        (form(hotwords='["a:b"]'), "hotwords", "contains ':'"),
        (form(model=b"caf\xe9"), "model", "'model' is not UTF-8 text (byte 3)"),
        (form(prompt="p" * 65537), "prompt", "'prompt' is longer than 65536 bytes"),
        (form(model=["a", "b"]), "model", "'model' is given more than once"),
        (form() + [FormPart("file", AUDIO)], "file", "'file' is given more than once"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(parts, param, message):
    error = refusal(parts)
    assert error.param == param and message in error.message, error.message


def test_hotwords_are_refused_when_the_server_takes_none():
    assert refusal(form(hotwords='["a"]'), max_hotwords=0).param == "hotwords"
    assert parse(form(hotwords="[]"), max_hotwords=0).hotwords == ()


def test_the_error_body_is_openais():
    error = ApiError(400, "'nbest' must be an integer", param="nbest")
    assert json.loads(error.body()) == {
        "error": {
            "message": "'nbest' must be an integer", "type": "invalid_request_error", "param": "nbest", "code": None
        }
    }  # fmt: skip
    unsupported = ApiError(415, "talk.m4a: MP4/M4A audio cannot be decoded here", code="unsupported_format")
    assert json.loads(unsupported.body())["error"]["code"] == "unsupported_format"
    echoed = refusal(form(hotwords='["\\ud800 x"]'))  # a lone surrogate from JSON, shown escaped
    assert "phrase '\\ud800 x' holds a control" in json.loads(echoed.body().decode("utf-8"))["error"]["message"]
    assert json.loads(ApiError(400, "lone \ud800").body().decode("utf-8"))["error"]["message"] == "lone \ufffd"


# ------------------------------------------------------------ transcripts

WORDS = (TokenTime("HELLO", 0.48, 0.9), TokenTime("WORLD", 1.0, 1.52))


def result() -> RecognitionResult:
    first = Segment(0, "HELLO WORLD", (("HELLO WORLD", -1.5),), 0.4, 1.6, True, WORDS)
    words = (TokenTime("GOOD", 2.04, 2.4), TokenTime("-->", 2.4, 2.5), TokenTime("MORNING", 2.5, 3.0))
    second = Segment(1, "GOOD --> MORNING", (("GOOD --> MORNING", -2.0),), 2.0, 3.0004, True, words)
    nbest = (("AND <BYE> &", -0.5), ("AN BY", -0.7))
    open_segment = Segment(2, "AND <BYE> &", nbest, 3600 * 100 + 0.0006, 360001.5, False)  # past 99 hours
    text = "HELLO WORLD GOOD --> MORNING AND <BYE> &"
    nbest = ((text, -4.0), ("HELLO WORLD GOOD --> MORNING AN BY", -4.2))
    return RecognitionResult(text, nbest, segments=(first, second), open=open_segment)


def test_a_transcript_of_closed_segments_and_the_open_one():
    transcript = transcript_from_result(result(), 360002.0, "en")
    assert transcript.text == "HELLO WORLD GOOD --> MORNING AND <BYE> &"
    assert transcript.language == "en" and transcript.duration == 360002.0
    assert transcript.nbest == result().nbest
    texts = [(s.id, s.text) for s in transcript.segments]
    assert texts == [(0, "HELLO WORLD"), (1, "GOOD --> MORNING"), (2, "AND <BYE> &")]
    assert transcript.segments[0] == TranscriptSegment(
        0, 0.4, 1.6, "HELLO WORLD", (TranscriptWord("HELLO", 0.48, 0.9), TranscriptWord("WORLD", 1.0, 1.52))
    )
    assert transcript.segments[2].words == ()  # the open segment's words are not timed yet
    after_the_end = Segment(1, "", (), 1.6, 1.6, False)
    ended = RecognitionResult("HELLO WORLD", (), segments=result().segments[:1], open=after_the_end)
    assert len(transcript_from_result(ended, 1.6, None).segments) == 1
    assert transcript_from_result(RecognitionResult("", ()), 0.0, None).segments == ()


def rendered(response_format: str, **fields: str) -> tuple[str, bytes]:
    request = parse(form(response_format=response_format, **fields))
    return render_transcript(transcript_from_result(result(), 360002.0, "en"), request)


def test_json_and_text():
    assert rendered("json") == ("application/json", b'{"text":"HELLO WORLD GOOD --> MORNING AND <BYE> &"}')
    content_type, body = rendered("json", nbest="5")
    assert json.loads(body)["nbest"] == [
        {"text": "HELLO WORLD GOOD --> MORNING AND <BYE> &", "score": -4.0},
        {"text": "HELLO WORLD GOOD --> MORNING AN BY", "score": -4.2},
    ]
    assert json.loads(rendered("json", nbest="1")[1]).keys() == {"text"}
    assert rendered("text") == ("text/plain; charset=utf-8", b"HELLO WORLD GOOD --> MORNING AND <BYE> &\n")


CUE = r"(?:(\d+)\n)?(\d{2,}):(\d{2}):(\d{2})[,.](\d{3}) --> (\d{2,}):(\d{2}):(\d{2})[,.](\d{3})\n([^\n]+)\n\n"


def cues(text: str) -> list[tuple[str | None, float, float, str]]:
    """(number, start, end, text) of each cue; the whole text must be cues."""
    found = []
    pos = 0
    for match in re.finditer(CUE, text):
        assert match.start() == pos, text[pos:]
        pos = match.end()
        number, h, m, s, ms, h2, m2, s2, ms2, line = match.groups()
        start = int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
        end = int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000
        found.append((number, round(start, 3), round(end, 3), line))
    assert pos == len(text), text[pos:]
    return found


def test_srt_and_vtt_cues():
    content_type, srt = rendered("srt")
    assert content_type == "text/plain; charset=utf-8"
    assert srt.startswith(b"1\n00:00:00,400 --> 00:00:01,600\nHELLO WORLD\n\n2\n00:00:02,000 --> 00:00:03,000\n")
    assert cues(srt.decode()) == [
        ("1", 0.4, 1.6, "HELLO WORLD"),
        ("2", 2.0, 3.0, "GOOD -> MORNING"),
        ("3", 360000.001, 360001.5, "AND <BYE> &"),
    ]
    content_type, vtt = rendered("vtt")
    assert content_type == "text/vtt; charset=utf-8" and vtt.startswith(b"WEBVTT\n\n00:00:00.400 --> 00:00:01.600\n")
    assert cues(vtt.decode().removeprefix("WEBVTT\n\n")) == [
        (None, 0.4, 1.6, "HELLO WORLD"),
        (None, 2.0, 3.0, "GOOD -&gt; MORNING"),
        (None, 360000.001, 360001.5, "AND &lt;BYE&gt; &amp;"),
    ]


def test_cue_text_stays_on_one_line_and_never_holds_an_arrow():
    segments = (
        TranscriptSegment(0, 0.0, 1.0, "two\n\nlines\r\n--> and ---> and -->>"),
        TranscriptSegment(1, 1.0, 2.0, " \n "),  # nothing to show: no cue
        TranscriptSegment(2, 2.0, 3.0, "1\n00:00:00,000 --> 00:00:01,000"),
    )
    transcript = Transcript("", None, 3.0, segments)
    srt = render_transcript(transcript, parse(form(response_format="srt")))[1].decode()
    assert [c[3] for c in cues(srt)] == ["two lines -> and -> and ->>", "1 00:00:00,000 -> 00:00:01,000"]
    assert [c[0] for c in cues(srt)] == ["1", "2"]
    vtt = render_transcript(transcript, parse(form(response_format="vtt")))[1].decode()
    assert "-->" not in "".join(c[3] for c in cues(vtt.removeprefix("WEBVTT\n\n")))
    empty = Transcript("", None, 0.0, ())
    assert render_transcript(empty, parse(form(response_format="srt")))[1] == b""
    assert render_transcript(empty, parse(form(response_format="vtt")))[1] == b"WEBVTT\n\n"


def test_verbose_json():
    content_type, body = rendered("verbose_json", timestamp_granularities__=["word", "segment"])
    verbose = json.loads(body)
    assert content_type == "application/json"
    assert verbose["task"] == "transcribe" and verbose["language"] == "en" and verbose["duration"] == 360002.0
    assert [(s["id"], s["start"], s["end"], s["text"]) for s in verbose["segments"]] == [
        (0, 0.4, 1.6, "HELLO WORLD"), (1, 2.0, 3.0, "GOOD --> MORNING"), (2, 360000.001, 360001.5, "AND <BYE> &"),
    ]  # fmt: skip
    assert verbose["words"][:2] == [
        {"word": "HELLO", "start": 0.48, "end": 0.9}, {"word": "WORLD", "start": 1.0, "end": 1.52}
    ]  # fmt: skip
    assert len(verbose["words"]) == 5
    assert "words" not in json.loads(rendered("verbose_json")[1])
    assert "segments" not in json.loads(rendered("verbose_json", timestamp_granularities="word")[1])
    unknown = render_transcript(Transcript("", None, 0.0, ()), parse(form(response_format="verbose_json")))
    assert json.loads(unknown[1]) == {"task": "transcribe", "language": "", "duration": 0.0, "text": "", "segments": []}


def test_every_body_is_utf8_whatever_the_text():
    lone = (TranscriptSegment(0, 0, 1, "\udfff"),)
    transcript = Transcript("caf\N{LATIN SMALL LETTER E WITH ACUTE} \ud800", None, 1.0, lone)
    for response_format in RESPONSE_FORMATS:
        body = render_transcript(transcript, parse(form(response_format=response_format)))[1]
        text = body.decode("utf-8")
        assert "\ufffd" in text and "\\u" not in text, (response_format, text)


# ------------------------------------------------------------ server-sent events


def events(data: bytes) -> list[dict]:
    assert data.endswith(b"\n\n") and all(line.startswith(b"data: ") for line in data.split(b"\n\n")[:-1])
    return [json.loads(line[6:]) for line in data.split(b"\n\n")[:-1]]


def test_sse_events():
    e_acute = "\N{LATIN SMALL LETTER E WITH ACUTE}"
    assert sse_event({"a": e_acute + "\n"}) == b'data: {"a":"' + e_acute.encode() + b'\\n"}\n\n'
    stream = text_delta_event("HELLO") + text_delta_event(" WORLD\n") + text_done_event("HELLO WORLD\n")
    assert events(stream) == [
        {"type": "transcript.text.delta", "delta": "HELLO"},
        {"type": "transcript.text.delta", "delta": " WORLD\n"},
        {"type": "transcript.text.done", "text": "HELLO WORLD\n"},
    ]
    assert events(error_event(ApiError(400, "bad"))) == [
        {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    ]


# ------------------------------------------------------------ the openai package

openai = pytest.importorskip("openai", reason="openai is in the test extra: pip install -e '.[test]'")


def test_the_bodies_are_the_openai_packages_models():
    from pydantic import TypeAdapter

    from openai.types.audio import Transcription, TranscriptionStreamEvent, TranscriptionVerbose

    body = rendered("verbose_json", timestamp_granularities__=["word", "segment"])[1]
    verbose = TranscriptionVerbose.model_validate_json(body)
    assert verbose.text == result().text and verbose.segments[2].start == 360000.001
    assert verbose.words[4].word == "MORNING"
    assert Transcription.model_validate_json(rendered("json", nbest="2")[1]).text == result().text
    adapter = TypeAdapter(TranscriptionStreamEvent)
    delta, done = (adapter.validate_python(e) for e in events(text_delta_event("A") + text_done_event("A B")))
    assert (delta.type, delta.delta) == ("transcript.text.delta", "A")
    assert (done.type, done.text) == ("transcript.text.done", "A B")


def openai_client(handler):
    """The openai client, its requests answered in memory by ``handler``
    (the HTTP library it is built on: httpx, or httpx2 from openai 3)."""
    from openai import _base_client

    http = getattr(_base_client, "httpx2", None) or _base_client.httpx

    def respond(request):
        status, content_type, body = handler(request.headers["content-type"], request.read())
        return http.Response(status, headers={"content-type": content_type}, content=body)

    client = http.Client(transport=http.MockTransport(respond))
    return openai.OpenAI(api_key="unused", base_url="http://asr.test/v1", http_client=client, max_retries=0)


def serve(content_type: str, body: bytes) -> tuple[int, str, bytes]:
    """What the server will do with a request, less the recognition."""
    try:
        request = parse_transcription_form(parse_form(body, form_boundary(content_type)), max_nbest=5, max_hotwords=3)
    except ApiError as error:
        return error.status, "application/json", error.body()
    assert request.audio == AUDIO
    transcript = transcript_from_result(result(), 360002.0, request.language)
    if request.stream:
        words = transcript.text.split(" ")
        deltas = b"".join(text_delta_event(w if i == 0 else " " + w) for i, w in enumerate(words))
        return 200, "text/event-stream", deltas + text_done_event(transcript.text)
    return (200, *render_transcript(transcript, request))


def test_the_openai_client_talks_to_it():
    client = openai_client(serve)
    audio = ("talk.wav", AUDIO, "audio/wav")
    create = client.audio.transcriptions.create
    assert create(model="whisper-1", file=audio).text == result().text
    verbose = create(model="whisper-1", file=audio, response_format="verbose_json", language="en",
                     timestamp_granularities=["word", "segment"], temperature=0.0, prompt="Hello")  # fmt: skip
    assert verbose.language == "en" and len(verbose.segments) == 3 and len(verbose.words) == 5
    assert create(model="whisper-1", file=audio, response_format="text") == result().text + "\n"
    assert cues(create(model="whisper-1", file=audio, response_format="srt"))[0] == ("1", 0.4, 1.6, "HELLO WORLD")
    assert create(model="whisper-1", file=audio, response_format="vtt").startswith("WEBVTT\n\n")
    extra = create(model="whisper-1", file=audio, extra_body={"nbest": 2, "hotwords": '["trio asr"]'})
    assert [n["text"] for n in extra.model_extra["nbest"]] == [text for text, _ in result().nbest]
    streamed = list(create(model="whisper-1", file=audio, stream=True))
    assert "".join(e.delta for e in streamed[:-1]) == streamed[-1].text == result().text
    with pytest.raises(openai.BadRequestError) as info:
        create(model="whisper-1", file=audio, response_format="srt", stream=True)
    assert info.value.status_code == 400 and info.value.param == "stream"
    assert "only for response_format json or text" in info.value.message


@pytest.mark.parametrize(
    ("detected", "asked", "name"),
    [
        ("en", None, "english"),
        ("yue", "auto", "cantonese"),
        ("zh", "en", "chinese"),  # what was heard wins over what was asked
        (None, "ja", "japanese"),
        ("nospeech", "ko", "korean"),  # SenseVoice's tags that are no language
        ("nospeech", None, ""),
        ("<unk>", "auto", ""),
        (None, None, ""),
    ],
)
def test_the_language_reported_is_a_language(detected, asked, name):
    from trio_asr.protocol.transcripts import language_name

    assert language_name(detected, asked) == name


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("talk.wav", "talk.wav"),
        ("", "upload"),
        ("a\nb\r\x00\u2028\u2029\x85.wav", "a?b?????.wav"),  # filename*= can carry any character: one line
        ("x" * 5000 + ".flac", "..." + "x" * 56 + ".flac"),
    ],
)
def test_the_file_name_that_messages_show_is_one_short_line(sent, shown):
    assert parse([FormPart("file", AUDIO, filename=sent)]).filename == shown
