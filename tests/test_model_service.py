"""The model service: batched results equal unbatched ones, adaptive batches,
cancellation and model errors stay with their own requests.

The model is the synthetic zipformer2-CTC fixture (and the real model too when
$TRIO_ASR_TEST_MODEL_DIR is set), wrapped in :class:`serverutil.ControlledModel`
where a test needs to hold or break a model call.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from paths import SPEECH_FILES
from serverutil import ControlledModel

from trio_asr.audio import down_mix, read_wav
from trio_asr.recognition.model import is_batch_invariant, load_model
from trio_asr.recognition.model_service import BatchingPolicy, ModelService, ModelServiceError
from trio_asr.recognition.recognizer import Recognizer, RecognizerStream
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.stream_options import StreamOptions

RNG = np.random.default_rng(7)


@pytest.fixture
def model(streaming_ctc_model_dir: Path) -> ControlledModel:
    return ControlledModel(load_model(streaming_ctc_model_dir))


@pytest.fixture
async def service(nursery: trio.Nursery, model: ControlledModel) -> ModelService:
    # exact=False: these tests are about batching itself, also for a model
    # that is not batch-invariant (the exact mode is tested on its own)
    service = ModelService(model, BatchingPolicy(max_batch=16, exact=False))
    forget_probe(model)
    await nursery.start(service.run)
    return service


def forget_probe(model: ControlledModel) -> None:
    """Drop the record of the batch-invariance probe's model runs."""
    model.batch_sizes.clear()
    model.first_features.clear()
    model.entered.clear()


def stream_with_chunks(model: ControlledModel, n_chunks: int):
    """A fresh model stream holding features for exactly ``n_chunks`` chunks."""
    stream = model.create_stream()
    frames = model.chunk_frames + (n_chunks - 1) * model.chunk_shift
    stream.accept_features(RNG.standard_normal((frames, model.feature_dim)).astype(np.float32))
    return stream


def reference_log_probs(model: ControlledModel, stream) -> np.ndarray:
    """What ``stream`` would give decoding all its ready chunks by itself."""
    copy = model.create_stream()
    copy.state = stream.state
    copy.accept_features(stream._buffer)
    return copy.decode_ready_chunks()


async def wait_until_running(model: ControlledModel) -> None:
    with trio.fail_after(10):
        await trio.to_thread.run_sync(model.entered.wait)
    model.entered.clear()


# ------------------------------------------------------------ results


async def decode_batched(service: ModelService, rs: RecognizerStream, x: np.ndarray, step: int) -> None:
    """Drive a recognizer stream as the server does, its model via the service."""
    for start in range(0, len(x), step):
        await trio.to_thread.run_sync(rs.accept_waveform, x[start : start + step])
        rs.accept_log_probs(await service.decode(rs.model_stream))
    await trio.to_thread.run_sync(rs.flush_input)
    rs.accept_log_probs(await service.decode(rs.model_stream))


async def test_concurrent_streams_batched_equal_unbatched(nursery: trio.Nursery, model: ControlledModel) -> None:
    service = ModelService(model, BatchingPolicy(max_batch=16))  # exact, as the server runs it
    forget_probe(model)
    await nursery.start(service.run)
    recognizer = Recognizer(model, beam=4)
    utterances = []
    for path in SPEECH_FILES:
        samples, rate = read_wav(path)
        utterances.append((down_mix(samples), rate))
    assert len(utterances) >= 4, "needs at least 4 speech clips"
    # more streams than files, of unequal lengths: cut copies of the files
    utterances += [(x[: len(x) * (k + 1) // 5], rate) for k, (x, rate) in enumerate(utterances[:3])]
    streams = [recognizer.create_stream(StreamOptions(nbest=3, sample_rate=rate)) for _, rate in utterances]
    async with trio.open_nursery() as nursery:
        for rs, (x, rate) in zip(streams, utterances):
            nursery.start_soon(decode_batched, service, rs, x, round(0.1 * rate))
    for rs, (x, rate) in zip(streams, utterances):
        got = rs.result()
        expected = transcribe_samples(recognizer, x, rate, nbest=3)
        assert got.text == expected.text
        assert [t for t, _ in got.nbest] == [t for t, _ in expected.nbest]
        assert [s for _, s in got.nbest] == pytest.approx([s for _, s in expected.nbest], abs=1e-4)
        assert got.times == expected.times
    assert any(rs.result().text for rs in streams), "the model must emit text for the comparison to mean something"
    stats = service.stats
    if service.max_batch > 1:  # 1 for a model that is not batch-invariant
        assert stats.largest_batch > 1 and stats.mean_batch > 1, stats
    assert stats.chunks == sum(rs.model_stream.chunks_run for rs in streams)
    assert sum(model.batch_sizes) == stats.chunks and len(model.batch_sizes) == stats.batches


async def test_single_stream_runs_at_once_in_batches_of_one(service: ModelService, model: ControlledModel) -> None:
    stream = stream_with_chunks(model, 3)
    expected = reference_log_probs(model, stream)
    log_probs = await service.decode(stream)
    np.testing.assert_allclose(log_probs, expected, atol=1e-5)
    assert stream.next_chunk() is None and stream.chunks_run == 3
    assert model.batch_sizes == [1, 1, 1]
    stats = service.stats
    assert (stats.batches, stats.chunks, stats.largest_batch) == (3, 3, 1)
    assert service.queue_delay == 0.0 and not service.overloaded
    # nothing ready: no model call at all
    assert (await service.decode(stream)).shape == (0, model.vocab_size)
    assert service.stats.batches == 3


async def test_requests_queued_during_a_batch_form_the_next_one(
    service: ModelService, model: ControlledModel
) -> None:
    model.gate = threading.Event()
    streams = [stream_with_chunks(model, 1) for _ in range(4)]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.decode, streams[0])
            await wait_until_running(model)
            for stream in streams[1:]:
                nursery.start_soon(service.decode, stream)
            await trio.testing.wait_all_tasks_blocked()
            assert service.queue_delay > 0
            model.gate.set()
    finally:
        model.gate.set()
    assert model.batch_sizes == [1, 3]


async def test_max_batch_bounds_the_batch(nursery: trio.Nursery, model: ControlledModel) -> None:
    later = [stream_with_chunks(model, 1) for _ in range(5)]
    await run_order(nursery, model, stream_with_chunks(model, 1), later, max_batch=2)
    assert model.batch_sizes == [1, 2, 2, 1]


class CostlyModel(ControlledModel):
    """Spends ``chunk_seconds`` of its thread's CPU on every chunk it runs."""

    chunk_seconds = 0.0

    def run(self, features: np.ndarray, states):
        result = super().run(features, states)
        until = time.thread_time() + self.chunk_seconds * len(features)
        while time.thread_time() < until:
            pass
        return result


async def test_a_call_takes_the_chunks_that_fit_in_its_cpu_budget(
    nursery: trio.Nursery, model: ControlledModel
) -> None:
    """Until a call is measured, a call may take max_batch chunks; after
    that, as many as fit in max_call_seconds at the measured CPU cost per
    chunk (5 ms here, plus the fixture's own: 17.5 ms fits 3, or 2)."""
    costly = CostlyModel(model.inner)
    costly.chunk_seconds = 0.005
    later = [stream_with_chunks(costly, 1) for _ in range(9)]
    service = ModelService(costly, BatchingPolicy(max_batch=16, max_call_seconds=0.0175, exact=False))
    assert service.batch_limit == 16
    await nursery.start(service.run)
    await queue_while_first_runs(service, costly, stream_with_chunks(costly, 1), later)
    first, *rest = costly.batch_sizes
    assert first == 1 and sum(rest) == 9
    assert all(2 <= size <= 3 for size in rest[:-1]) and 1 <= rest[-1] <= 3, costly.batch_sizes
    assert service.batch_limit in (2, 3)


def chunk_marks(model: ControlledModel, stream) -> list[float]:
    """The first feature value of each of ``stream``'s ready chunks, as
    ``ControlledModel.first_features`` records them when they run."""
    count = (len(stream._buffer) - model.chunk_frames) // model.chunk_shift + 1
    return [float(stream._buffer[k * model.chunk_shift, 0]) for k in range(count)]


async def run_order(
    nursery: trio.Nursery, model: ControlledModel, first, later, *, max_batch: int = 1
) -> list[float]:
    """Decode ``first``, then, while its first chunk runs, ``later`` streams
    one after another; the first chunk of each model call in the order the
    calls ran (as :func:`chunk_marks` names them)."""
    service = ModelService(model, BatchingPolicy(max_batch=max_batch, exact=False))
    forget_probe(model)
    await nursery.start(service.run)
    await queue_while_first_runs(service, model, first, later)
    return [run[0] for run in model.first_features]


async def queue_while_first_runs(service: ModelService, model: ControlledModel, first, later) -> None:
    """Decode ``first`` and, while its first chunk runs, ``later`` streams
    one after another, so that they queue in that order; until all are done."""
    model.gate = threading.Event()
    try:
        async with trio.open_nursery() as clients:
            clients.start_soon(service.decode, first)
            await wait_until_running(model)
            for stream in later:
                clients.start_soon(service.decode, stream)
                await trio.testing.wait_all_tasks_blocked()
            model.gate.set()
    finally:
        model.gate.set()


async def test_a_decodes_later_chunks_go_ahead_of_decodes_begun_after_it(
    nursery: trio.Nursery, model: ControlledModel
) -> None:
    """The end of a stream needs two chunks, one after the other: the second
    must not queue behind every chunk other streams asked for meanwhile."""
    ending = stream_with_chunks(model, 2)
    others = [stream_with_chunks(model, 1) for _ in range(3)]
    expected = chunk_marks(model, ending) + [m for s in others for m in chunk_marks(model, s)]
    assert await run_order(nursery, model, ending, others) == expected
    assert set(model.batch_sizes) == {1}


async def test_a_long_decode_holds_up_later_decodes_for_two_chunks_at_most(
    nursery: trio.Nursery, model: ControlledModel
) -> None:
    """A client that sent many chunks' worth of audio at once does not make
    everyone who asked later wait for all of it."""
    bulk = stream_with_chunks(model, 4)
    others = [stream_with_chunks(model, 1) for _ in range(2)]
    bulk_marks = chunk_marks(model, bulk)
    expected = bulk_marks[:2] + [m for s in others for m in chunk_marks(model, s)] + bulk_marks[2:]
    assert await run_order(nursery, model, bulk, others) == expected
    assert set(model.batch_sizes) == {1}


async def test_every_worker_keeps_serving_after_calls_that_empty_the_queue(
    nursery: trio.Nursery, model: ControlledModel
) -> None:
    """With two concurrent batches, a call held in the model never stops a
    second one from starting, however often the queue ran empty before (a
    worker that finds it empty must not leave the other one waiting on an
    event nobody sets)."""
    service = ModelService(model, BatchingPolicy(max_batch=1, concurrent_batches=2, exact=False))
    forget_probe(model)
    await nursery.start(service.run)
    for _ in range(4):
        await service.decode(stream_with_chunks(model, 1))  # returns with the queue empty
        model.gate = threading.Event()
        try:
            async with trio.open_nursery() as clients:
                clients.start_soon(service.decode, stream_with_chunks(model, 1))
                await wait_until_running(model)  # one call held
                clients.start_soon(service.decode, stream_with_chunks(model, 1))
                beside = await trio.to_thread.run_sync(model.entered.wait, 5)
                model.entered.clear()
                model.gate.set()
                assert beside, "the second call did not start while the first was held"
        finally:
            model.gate.set()
            model.gate = None
    assert model.batch_sizes == [1] * 12


async def test_the_next_batch_starts_before_the_finished_callers_run(
    nursery: trio.Nursery, model: ControlledModel
) -> None:
    """When a call returns, its worker starts the next batch at once: the
    callers it wakes (whose search and reply take the event loop a while)
    must not leave the model idle meanwhile."""
    service = ModelService(model, BatchingPolicy(max_batch=1, concurrent_batches=1, exact=False))
    forget_probe(model)
    await nursery.start(service.run)
    seen: list[int] = []

    async def first() -> None:
        await service.decode(stream_with_chunks(model, 1))
        seen.append(service.stats.batches)  # the first thing its caller does

    model.gate = threading.Event()
    try:
        async with trio.open_nursery() as clients:
            clients.start_soon(first)
            await wait_until_running(model)
            clients.start_soon(service.decode, stream_with_chunks(model, 1))
            await trio.testing.wait_all_tasks_blocked()
            model.gate.set()
    finally:
        model.gate.set()
    assert seen == [2], "the queued chunk's batch had not started when the first caller ran"


# ------------------------------------------------------------ cancellation and errors


def hold_next_run(model: ControlledModel) -> None:
    """Let the held run go on, but hold the one after it."""
    held, model.gate = model.gate, threading.Event()
    assert held is not None
    held.set()


@pytest.mark.parametrize("where", ["queued", "running"])
async def test_cancelled_request_leaves_its_stream_and_the_others_intact(
    service: ModelService, model: ControlledModel, where: str
) -> None:
    if where == "running" and not is_batch_invariant(model):
        pytest.skip("a batch-dependent model's batched results differ from running alone by design")
    forget_probe(model)
    model.gate = threading.Event()
    first = stream_with_chunks(model, 1)
    victim, other = stream_with_chunks(model, 2), stream_with_chunks(model, 2)
    expected = {id(s): reference_log_probs(model, s) for s in (first, victim, other)}
    results = {}

    async def decode(stream) -> None:
        results[id(stream)] = await service.decode(stream)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decode, first)
            await wait_until_running(model)  # batch 1: first, held
            victim_scope = trio.CancelScope()
            nursery.start_soon(_in_scope, victim_scope, decode, victim)
            nursery.start_soon(decode, other)
            await trio.testing.wait_all_tasks_blocked()
            if where == "running":  # batch 2: victim and other, held
                hold_next_run(model)
                await wait_until_running(model)
            victim_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            model.gate.set()
    finally:
        model.gate.set()
    assert id(victim) not in results
    assert victim.chunks_run == 0, "a cancelled request must not advance its stream"
    for stream in (first, other):
        np.testing.assert_allclose(results[id(stream)], expected[id(stream)], atol=1e-5)
    if where == "queued":
        assert model.batch_sizes[:2] == [1, 1], "the cancelled request was skipped"
    else:
        assert model.batch_sizes[:2] == [1, 2]
    # the victim's stream still decodes exactly as it would have
    np.testing.assert_allclose(await service.decode(victim), expected[id(victim)], atol=1e-5)


async def _in_scope(scope: trio.CancelScope, fn, *args) -> None:
    with scope:
        await fn(*args)


async def test_model_error_reaches_only_its_batch(service: ModelService, model: ControlledModel) -> None:
    model.gate = threading.Event()
    model.fail_calls = {1}
    first, doomed1, doomed2 = (stream_with_chunks(model, 1) for _ in range(3))
    expected_first = reference_log_probs(model, first)
    outcome: dict[str, object] = {}

    async def decode(name: str, stream) -> None:
        try:
            outcome[name] = await service.decode(stream)
        except ModelServiceError as exc:
            outcome[name] = exc

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decode, "first", first)
            await wait_until_running(model)
            nursery.start_soon(decode, "doomed1", doomed1)
            nursery.start_soon(decode, "doomed2", doomed2)
            await trio.testing.wait_all_tasks_blocked()
            model.gate.set()
    finally:
        model.gate.set()
    assert model.batch_sizes == [1, 2]
    np.testing.assert_allclose(outcome["first"], expected_first, atol=1e-5)
    for name, stream in (("doomed1", doomed1), ("doomed2", doomed2)):
        error = outcome[name]
        assert isinstance(error, ModelServiceError) and isinstance(error.__cause__, RuntimeError)
        assert stream.chunks_run == 0
    assert service.stats.failed_batches == 1
    # the service goes on, and the failed streams can be decoded again
    expected = reference_log_probs(model, doomed1)
    np.testing.assert_allclose(await service.decode(doomed1), expected, atol=1e-5)


async def test_a_thread_that_cannot_start_fails_only_its_batch(
    service: ModelService, model: ControlledModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trio.lowlevel.start_thread_soon
    calls = []

    def start_thread_soon(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("can't start new thread")
        return real(*args, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", start_thread_soon)
    doomed = stream_with_chunks(model, 1)
    with pytest.raises(ModelServiceError) as caught:
        await service.decode(doomed)
    assert "can't start new thread" in str(caught.value.__cause__)
    assert doomed.chunks_run == 0
    expected = reference_log_probs(model, doomed)
    np.testing.assert_allclose(await service.decode(doomed), expected, atol=1e-5)
    assert service.stats.failed_batches == 1


async def test_stopped_service_fails_requests_instead_of_hanging(model: ControlledModel) -> None:
    service = ModelService(model)
    model.gate = threading.Event()
    outcomes: dict[str, object] = {}

    async def decode(name: str, stream) -> None:
        try:
            outcomes[name] = await service.decode(stream)
        except ModelServiceError as exc:
            outcomes[name] = exc

    try:
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as service_nursery:
                await service_nursery.start(service.run)
                nursery.start_soon(decode, "running", stream_with_chunks(model, 1))
                await wait_until_running(model)
                nursery.start_soon(decode, "queued", stream_with_chunks(model, 1))
                await trio.testing.wait_all_tasks_blocked()
                service_nursery.cancel_scope.cancel()
                model.gate.set()
    finally:
        model.gate.set()
    assert set(outcomes) == {"running", "queued"}, "every caller got an answer"
    assert isinstance(outcomes["queued"], ModelServiceError)
    with pytest.raises(ModelServiceError):
        await service.decode(stream_with_chunks(model, 1))


def test_invalid_settings(model: ControlledModel) -> None:
    with pytest.raises(ValueError):
        ModelService(model, BatchingPolicy(max_batch=0))
    with pytest.raises(ValueError):
        ModelService(model, BatchingPolicy(max_queue_delay=0))
    with pytest.raises(ValueError):
        ModelService(model, BatchingPolicy(max_call_seconds=0))


class BatchDependentModel(ControlledModel):
    """Like a dynamically quantized model: every output moves with a
    statistic of the whole batch, so a stream's log-probs depend on its
    batch mates."""

    def run(self, features: np.ndarray, states):
        log_probs, new_states = super().run(features, states)
        return log_probs + 0.05 * float(np.abs(features).mean()), new_states


def test_batch_invariance_probe(model: ControlledModel) -> None:
    if not is_batch_invariant(model):
        pytest.skip("this model's outputs depend on the batch (dynamically quantized activations)")
    assert not is_batch_invariant(BatchDependentModel(model.inner))


def decode_alone(model: ControlledModel, stream) -> np.ndarray:
    """``stream``'s ready chunks run one per model call, on a copy."""
    copy = model.create_stream()
    copy.state = stream.state
    copy.accept_features(stream._buffer)
    outputs = []
    while (chunk := copy.next_chunk()) is not None:
        log_probs, (state,) = model.run(chunk[None], [copy.state])
        copy.advance(state)
        outputs.append(log_probs[0])
    return np.concatenate(outputs)


@pytest.mark.parametrize("exact", [True, False])
async def test_exact_service_never_batches_a_batch_dependent_model(
    nursery: trio.Nursery, model: ControlledModel, exact: bool
) -> None:
    dependent = BatchDependentModel(model.inner)
    service = ModelService(dependent, BatchingPolicy(max_batch=8, exact=exact))
    forget_probe(dependent)
    await nursery.start(service.run)
    streams = [stream_with_chunks(dependent, 2) for _ in range(4)]
    expected = [decode_alone(dependent, s) for s in streams]
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = await service.decode(streams[i])

    dependent.gate = gate = threading.Event()  # hold the first run so the rest queue up
    async with trio.open_nursery() as inner:
        for i in range(len(streams)):
            inner.start_soon(one, i)
        await wait_until_running(dependent)
        await trio.testing.wait_all_tasks_blocked()
        dependent.gate = None
        gate.set()
    if exact:
        assert service.max_batch == 1 and max(dependent.batch_sizes) == 1
        for i, log_probs in results.items():
            np.testing.assert_allclose(log_probs, expected[i], atol=1e-5)
    else:
        assert max(dependent.batch_sizes) > 1  # batched anyway: results may move
