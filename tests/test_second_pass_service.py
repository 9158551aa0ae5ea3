"""The second-pass service and the two-pass replies, without a server.

- batches take the oldest ticket and those of similar lengths, within the
  policy's bounds, and give each utterance what it gets alone;
- abandoned tickets are skipped; a failed model call fails its batch's
  tickets (SecondPassError) and the service goes on; a ticket that cannot
  be prepared fails alone; a stopped service refuses tickets;
- TwoPassReplies announce in order, only resolved segments, and the final
  reply needs them all.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trio
from offlineutil import noise

from trio_asr.protocol.messages import StartStream
from trio_asr.protocol.two_pass import SecondPassText, TwoPassReplies
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.service import SecondPassError, SecondPassPolicy, SecondPassService
from trio_asr.recognition.segments import RecognitionResult, Segment, TokenTime
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.testing.sense_voice import write_sense_voice_model

RATE = 16000


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory) -> OfflineRecognizer:
    directory: Path = tmp_path_factory.mktemp("sense-voice")
    write_sense_voice_model(directory)
    return OfflineRecognizer(load_offline_model(directory), beam=4)


class Spy:
    """Records the utterances (their durations) of each model call."""

    def __init__(self, inner: OfflineRecognizer, fail: bool = False) -> None:
        self.inner, self.fail, self.calls, self.delay = inner, fail, [], 0.0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, utterances):
        self.calls.append(sorted(round(u.duration, 2) for u in utterances))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return self.inner.run(utterances)


def options(**kw) -> OfflineOptions:
    return OfflineOptions(sample_rate=RATE, **kw)


async def test_similar_lengths_are_batched_together(recognizer, nursery) -> None:
    spy = Spy(recognizer)
    sizes = []
    service = SecondPassService(spy, SecondPassPolicy(max_batch=3), on_batch=lambda n, _d, _c: sizes.append(n))
    await nursery.start(service.run)
    durations = [1.0, 3.0, 1.1, 3.2, 1.05, 1.02, 0.5]
    clips = [noise(d, seed=i) for i, d in enumerate(durations)]
    tickets = [service.submit(c, options(offset_s=float(i))) for i, c in enumerate(clips)]
    results = [await t.wait() for t in tickets]
    # the oldest first, with its closest neighbours (at most 3, within 1.5x)
    assert spy.calls == [[1.0, 1.02, 1.05], [3.0, 3.2], [1.1], [0.5]]
    assert sizes == [3, 2, 1, 1] and service.batches == 4 and service.utterances == 7
    for i, (clip, found) in enumerate(zip(clips, results)):
        alone = recognizer.recognize(clip, options(offset_s=float(i)))
        # the same as alone, up to float rounding in the scores
        assert found.result.text == alone.result.text and found.result.times == alone.result.times
        assert found.tags == alone.tags
        assert [s for _, s in found.result.nbest] == pytest.approx([s for _, s in alone.result.nbest], rel=1e-5)
    assert service.queue_delay == 0.0 and not service.overloaded


async def test_padded_seconds_bound_a_batch(recognizer, nursery) -> None:
    spy = Spy(recognizer)
    service = SecondPassService(spy, SecondPassPolicy(max_batch_seconds=2.5))
    await nursery.start(service.run)
    tickets = [service.submit(noise(1.0, seed=i), options()) for i in range(5)]
    for t in tickets:
        await t.wait()
    assert spy.calls == [[1.0, 1.0], [1.0, 1.0], [1.0]]


async def test_the_measured_cost_bounds_a_batch(recognizer, nursery) -> None:
    spy = Spy(recognizer)
    service = SecondPassService(spy, SecondPassPolicy(max_call_seconds=1e-6))
    assert service.batch_seconds == service.policy.max_batch_seconds  # nothing measured yet
    await nursery.start(service.run)
    await service.submit(noise(1.0), options()).wait()
    assert 0 < service.batch_seconds < 0.1
    tickets = [service.submit(noise(1.0, seed=i), options()) for i in range(3)]
    for t in tickets:
        await t.wait()
    assert spy.calls == [[1.0], [1.0], [1.0], [1.0]]  # one at a time: a ticket always runs


async def test_abandoned_tickets_are_skipped(recognizer, nursery) -> None:
    spy = Spy(recognizer)
    service = SecondPassService(spy)
    await nursery.start(service.run)
    tickets = [service.submit(noise(1.0 + i / 10, seed=i), options()) for i in range(3)]
    tickets[1].abandon()
    await tickets[0].wait()
    await tickets[2].wait()
    assert spy.calls == [[1.0, 1.2]] and not tickets[1].done.is_set()


async def test_a_failed_call_fails_its_batch_and_the_service_goes_on(recognizer, nursery) -> None:
    spy = Spy(recognizer, fail=True)
    service = SecondPassService(spy)
    await nursery.start(service.run)
    bad = [service.submit(noise(1.0, seed=i), options()) for i in range(2)]
    for ticket in bad:
        with pytest.raises(SecondPassError) as caught:
            await ticket.wait()
        assert isinstance(caught.value.__cause__, RuntimeError)
    assert service.failed_batches == 1
    spy.fail = False
    assert (await service.submit(noise(1.0), options()).wait()).duration == 1.0


async def test_an_utterance_that_cannot_be_prepared_fails_alone(recognizer, nursery) -> None:
    service = SecondPassService(recognizer)
    await nursery.start(service.run)
    bad = service.submit(noise(1.0), options(language="xx"))
    good = service.submit(noise(1.0, seed=1), options())
    with pytest.raises(SecondPassError):
        await bad.wait()
    assert (await good.wait()).result == recognizer.recognize(noise(1.0, seed=1), options()).result


async def test_a_stopped_service_refuses_and_fails_what_is_queued(recognizer) -> None:
    spy = Spy(recognizer)
    spy.delay = 0.3
    service = SecondPassService(spy)
    with pytest.raises(SecondPassError):
        service.submit(noise(1.0), options())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        running = service.submit(noise(1.0), options())
        queued = service.submit(noise(3.0), options())  # another length: the next batch
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert (await running.wait()).duration == 1.0  # a started batch runs to its end
    with pytest.raises(SecondPassError):
        await queued.wait()
    with pytest.raises(SecondPassError):
        service.submit(noise(1.0), options())


# ------------------------------------------------------------ replies


def _segment(i: int, text: str) -> Segment:
    return Segment(i, text, ((text, -1.0),), float(i), i + 1.0, True, (TokenTime(text, i + 0.1, i + 0.5),))


def _result(texts: list[str], open_text: str = "") -> RecognitionResult:
    segments = tuple(_segment(i, t) for i, t in enumerate(texts))
    n = len(texts)
    full = " ".join([*texts, open_text]).strip()
    return RecognitionResult(full, ((full, -2.0),), segments=segments,
                             open=Segment(n, open_text, ((open_text, -1.0),), n, n + 0.5, False))  # fmt: skip


def _start(**kw) -> StartStream:
    return StartStream("a.wav", 1, 16, StreamOptions(sample_rate=RATE, nbest=kw.pop("nbest", 1)), **kw)


def test_segments_are_announced_in_order_once_resolved() -> None:
    replies = TwoPassReplies(_start())
    result = _result(["a", "b"], "c")
    replies.resolve(1, SecondPassText("B2", (("B2", -0.5),), (TokenTime("B2", 1.1, 1.4),), (("lang", "en"),)))
    reply = replies.partial(result)
    assert reply.segments == () and reply.text == "a b c" and reply.segment is None  # 1 waits for 0
    replies.resolve(0, SecondPassText("A2"))
    reply = replies.partial(result)
    assert [(s.index, s.text, s.tags) for s in reply.segments] == [(0, "A2", ()), (1, "B2", (("lang", "en"),))]
    assert reply.segments[1].times == (("B2", 1.1, 1.4),) and reply.segments[1].start == 1.0
    assert reply.text == "A2 B2 c" and reply.segment == 2
    again = replies.partial(result)
    assert again.segments == () and again.text == "A2 B2 c"  # each once
    assert replies.partial(result) is again  # nothing new: the same reply (encoded once)
    replies.resolve(2, SecondPassText("C2"))
    assert replies.partial(result) is not again


def test_the_final_reply_needs_every_segment() -> None:
    replies = TwoPassReplies(_start(nbest=2))
    final = _result(["a", "b"])
    replies.resolve(0, SecondPassText("A2", (("A2", -1.0),), (TokenTime("A2", 0.1, 0.2),)))
    with pytest.raises(RuntimeError):
        replies.final(final)
    replies.resolve(1, SecondPassText("B2", (("B2", -1.0), ("B3", -2.0)), (TokenTime("B2", 1.1, 1.2),)))
    reply = replies.final(final)
    assert reply.text == "A2 B2" and reply.times == (("A2", 0.1, 0.2), ("B2", 1.1, 1.2))
    assert reply.nbest == (("A2 B2", -1.0), ("A2 B3", -2.0))
    assert [s.nbest for s in reply.segments] == [(("A2", -1.0),), (("B2", -1.0), ("B3", -2.0))]


def test_compact_replies_keep_the_open_segment() -> None:
    replies = TwoPassReplies(_start(compact=True))
    replies.resolve(0, SecondPassText("A2"))
    reply = replies.partial(_result(["a"], "b"))
    assert reply.text == "b" and reply.segment == 1 and [s.text for s in reply.segments] == ["A2"]


def test_second_pass_fields_are_written_only_when_set() -> None:
    import json

    from trio_asr.protocol.messages import PartialResult, SegmentFinal, encode_reply

    plain = SegmentFinal(0, "a", 0.0, 1.0)
    tagged = SegmentFinal(1, "b", 1.0, 2.0, nbest=(("b", -1.0),), tags=(("lang", "en"), ("emotion", "HAPPY")))
    segments = json.loads(encode_reply(PartialResult("a b", (), 2, (plain, tagged))))["segments"]
    assert set(segments[0]) == {"segment", "result", "bg", "ed", "times"}
    assert segments[1]["nbest"] == [{"text": "b", "score": -1.0}]
    assert (segments[1]["lang"], segments[1]["emotion"]) == ("en", "HAPPY")


# ------------------------------------------------------------ a stream's submissions


class FakeService:
    def __init__(self) -> None:
        self.submitted, self.tickets = [], []

    def submit(self, samples, options):
        from trio_asr.recognition.offline.service import Ticket

        self.submitted.append((samples.copy(), options))
        self.tickets.append(Ticket(samples, options, len(samples) / RATE, trio.current_time()))
        return self.tickets[-1]


async def test_a_stream_submits_exactly_each_segments_samples_with_its_hotwords() -> None:
    from trio_asr.recognition.hotwords import Hotword
    from trio_asr.serving.metrics import ServerMetrics
    from trio_asr.serving.second_pass import StreamReplies

    hotwords = (Hotword("hello", 2.0),)
    start = StartStream("a.wav", 1, 16, StreamOptions(sample_rate=8000, nbest=2, hotwords=hotwords))
    service = FakeService()
    replies = StreamReplies(start, service, ServerMetrics())
    audio = np.arange(8000 * 3, dtype=np.float32)  # 3 s at 8 kHz; each sample its index

    def result(closed: list[tuple[float, float]], open_start: float) -> RecognitionResult:
        segments = tuple(Segment(i, "x", (("x", -1.0),), a, b, True) for i, (a, b) in enumerate(closed))
        return RecognitionResult("x", (), segments=segments, open=Segment(len(closed), "", (), open_start, 3.0, False))

    replies.partial(audio[:8000], result([], 0.0))
    replies.partial(audio[8000:16000], result([(0.0, 0.5)], 0.8))  # 0.5..0.8: a segment without text, dropped
    replies.partial(audio[16000:], result([(0.0, 0.5), (0.8, 2.5)], 2.5))
    (first, o1), (second, o2) = service.submitted
    assert np.array_equal(first, audio[:4000]) and np.array_equal(second, audio[6400:20000])
    assert (o1.offset_s, o2.offset_s) == (0.0, 0.8) and o1.hotwords == hotwords and o1.nbest == 2
    assert o1.sample_rate == 8000
    assert replies._samples.start >= 16000 - 8000  # what the open segment does not need is gone
    replies.close()  # the stream went away
    assert len(service.tickets) == 2 and all(t.abandoned for t in service.tickets)


async def test_hotwords_the_offline_model_cannot_spell_are_left_out(recognizer, nursery) -> None:
    from trio_asr.recognition.hotwords import Hotword

    service = SecondPassService(recognizer)
    await nursery.start(service.run)
    clip = noise(1.0, seed=3)
    spellable, unspellable = Hotword("你好", 3.0), Hotword("zzz", 3.0)  # the fixture has no 'z'
    mixed = await service.submit(clip, options(hotwords=(unspellable, spellable))).wait()
    assert mixed.result == recognizer.recognize(clip, options(hotwords=(spellable,))).result
    alone = await service.submit(clip, options(hotwords=(unspellable,))).wait()
    assert alone.result == recognizer.recognize(clip, options()).result
