"""OpenAI's audio API on the server's port: ``POST /v1/audio/transcriptions``, ``GET /v1/models``.

:class:`TranscriptionsApi` holds the two handlers that the server routes
(:mod:`trio_asr.serving.routes` has already checked the access token, the
same ``Authorization: Bearer`` tokens as the WebSocket's, and refused new
work while the server drains).  An upload goes through, in order:

1. admission, before a byte of the body is read: at most
   :data:`RECEIVING_PER_PLACE` x ``max_uploads`` uploads being received or
   waiting (429 beyond), none while the model's or the second pass's queue
   is over ``max_queue_delay`` (503);
2. the body, at most ``max_upload_bytes`` of audio plus the form's other
   fields (413), parsed as multipart/form-data
   (:mod:`trio_asr.protocol.multipart`) and checked field by field
   (:mod:`trio_asr.protocol.transcription_api`; 400 naming the field);
3. a place to decode in: at most ``max_uploads`` uploads decode at once (a
   slow sender holds none while its body comes); a received upload waits
   up to :data:`PLACE_WAIT_SECONDS` for one (429 after);
4. the audio decoded in a worker thread (:func:`trio_asr.audio_files.decode_audio`:
   415 for a format it cannot read, 400 for a broken or empty file, 413
   over ``max_upload_seconds``), down-mixed a block at a time;
5. decoding (:class:`~trio_asr.serving.file_transcriber.FileTranscriber`:
   the second pass's offline model when the server has one, else the
   streaming model), then the response in the asked format; with
   ``stream=true`` server-sent events instead: one ``transcript.text.delta``
   per segment as it is decoded, then ``transcript.text.done`` (an error
   after the events have started is an ``error`` event).

An upload still decoding when the server stops (its grace period over)
gets 503.  Every refusal is OpenAI's error body with the status that says
why (``Retry-After`` on 429 and 503).  The metrics count uploads' audio
seconds and the time from request to response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
import trio

from trio_asr.audio_files import AudioFileError, AudioTooLong, UnsupportedAudioFormat, decode_audio
from trio_asr.protocol.multipart import MultipartError, form_boundary, parse_form
from trio_asr.protocol.transcription_api import (
    ApiError,
    TranscriptionRequest,
    error_event,
    parse_transcription_form,
    render_transcript,
    text_delta_event,
    text_done_event,
    transcript_from_result,
)
from trio_asr.protocol.transcripts import language_name
from trio_asr.recognition.compile_queue import CompileQueueFull
from trio_asr.recognition.hotwords import HotwordError
from trio_asr.recognition.model_service import ModelServiceError
from trio_asr.recognition.offline.service import SecondPassError
from trio_asr.recognition.resample import MAX_RATE, MIN_RATE
from trio_asr.recognition.segments import join_texts
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.file_transcriber import FileRequest, FileTranscriber, FileTranscript, SegmentSink
from trio_asr.serving.http import Exchange, HttpError, RequestTooLarge
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.serving.processes import LocalPlaces

__all__ = ["FORM_OVERHEAD_BYTES", "MODELS_PATH", "TRANSCRIPTIONS_PATH", "TranscriptionsApi"]

log = logging.getLogger("trio_asr.http")

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"
#: what a request body may hold beyond ``max_upload_bytes`` of audio: the other form fields
FORM_OVERHEAD_BYTES = 256 * 1024
#: uploads that may be received or wait at once, per place to decode in (``max_uploads``)
RECEIVING_PER_PLACE = 4
#: how long a received upload waits for a place to decode in before it gets 429
PLACE_WAIT_SECONDS = 10.0
#: what ``verbose_json`` calls the languages the models name by code (as OpenAI's API does)
_JSON = [("content-type", "application/json")]


def _retry_after(error: ApiError) -> list[tuple[str, str]]:
    return [("retry-after", "1")] if error.status in (429, 503) else []


class TranscriptionsApi:
    """The handlers; ``overloaded()`` says whether the models' queues are
    too long for new work, ``on_idle()`` is called whenever an upload ends
    (the server's drain waits for uploads as for streams)."""

    def __init__(
        self,
        config: ServerConfig,
        transcriber: FileTranscriber,
        metrics: ServerMetrics,
        *,
        overloaded: Callable[[], bool],
        on_idle: Callable[[], None] = lambda: None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.config = config
        self.transcriber = transcriber
        self.metrics = metrics
        self.overloaded = overloaded
        self.on_idle = on_idle
        self.lifecycle = lifecycle
        #: uploads being answered now (received, waiting, decoded)
        self.active = 0
        #: uploads being received, or received and waiting for a place to decode in
        self.receiving = 0
        #: admission's count of uploads (a worker of ``serve --processes`` shares it with the others)
        self.places = LocalPlaces(config.max_uploads)

    def model_ids(self) -> list[str]:
        """What ``GET /v1/models`` lists: the model that decodes uploads
        first (the second pass's when there is one), by directory name."""
        config = self.config
        names = [path.name for path in (config.second_pass, config.model) if path is not None]
        return names or ["trio-asr"]

    async def models(self, exchange: Exchange) -> None:
        """``GET /v1/models``: the models this server decodes with."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "trio-asr"} for name in self.model_ids()]
        await exchange.respond_json(200, {"object": "list", "data": data})

    async def transcriptions(self, exchange: Exchange) -> None:
        """``POST /v1/audio/transcriptions`` (see the module docstring)."""
        self.active += 1
        started = time.perf_counter()
        try:
            await self._transcribe(exchange)
        except ApiError as error:
            await self._refuse(exchange, error)
        except (HttpError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # the connection's own failures, which the HTTP layer handles
        except Exception:  # a bug: still an answer in OpenAI's shape, and the traceback in the log
            log.exception("upload from %s failed", exchange.peer)
            await self._refuse(exchange, ApiError(500, "the server failed on this upload; see its log",
                                                  type="server_error"))  # fmt: skip
        finally:
            self.active -= 1
            self.metrics.upload_answered(time.perf_counter() - started)
            self.on_idle()

    @staticmethod
    async def _refuse(exchange: Exchange, error: ApiError) -> None:
        if exchange.response_open:  # events have gone out: the error is one more
            await exchange.send(error_event(error))
            await exchange.end_response()
            return
        if error.status in (408, 413) or error.status >= 500:
            exchange.close_after()  # the rest of the body may not have been read
        await exchange.respond(error.status, error.body(), [*_JSON, *_retry_after(error)])

    async def _transcribe(self, exchange: Exchange) -> None:
        config = self.config
        if self.receiving >= RECEIVING_PER_PLACE * config.max_uploads:
            raise ApiError(429, f"too many uploads at once (this server decodes {config.max_uploads} at a time); "
                           "retry shortly", type="rate_limit_error", code="too_many_uploads")  # fmt: skip
        if self.overloaded():
            raise ApiError(503, "server overloaded; retry shortly", type="server_error", code="overloaded")
        self.receiving += 1
        try:
            request = await self._receive(exchange)
            await self._take_place()
        finally:
            self.receiving -= 1
        try:
            await self._answer(exchange, request)
        finally:
            self.places.release()

    async def _receive(self, exchange: Exchange) -> TranscriptionRequest:
        """The request's form, checked."""
        config = self.config
        try:
            boundary = form_boundary(exchange.header("content-type") or "")
            body = await exchange.read_body(config.max_upload_bytes + FORM_OVERHEAD_BYTES)
            request = parse_transcription_form(
                parse_form(body, boundary), max_nbest=config.nbest_max, max_hotwords=config.max_stream_hotwords
            )
        except MultipartError as exc:
            raise ApiError(400, str(exc)) from None
        except RequestTooLarge:
            raise ApiError(413, f"request too large: the file may be at most {config.max_upload_bytes} bytes "
                           "(--max-upload-bytes)", param="file", code="file_too_large") from None  # fmt: skip
        except HttpError as exc:  # a body cut short, or too slow
            raise ApiError(exc.status, str(exc)) from None
        if len(request.audio) > config.max_upload_bytes:
            raise ApiError(413, f"file is {len(request.audio)} bytes; this server takes at most "
                           f"{config.max_upload_bytes} (--max-upload-bytes)", param="file", code="file_too_large")  # fmt: skip
        try:
            self.transcriber.check(FileRequest(language=request.language))
        except ValueError as exc:
            raise ApiError(400, str(exc), param="language") from None
        return request

    async def _take_place(self) -> None:
        """Wait (up to :data:`PLACE_WAIT_SECONDS`) for one of the
        ``max_uploads`` places to decode in; 429 when none frees up."""
        with trio.move_on_after(PLACE_WAIT_SECONDS):
            while not self.places.take():
                await trio.sleep(0.05)  # the places may be shared with other processes: polled
            return
        raise ApiError(429, f"the server is decoding {self.config.max_uploads} uploads and more are waiting; "
                       "retry shortly", type="rate_limit_error", code="too_many_uploads")  # fmt: skip

    async def _answer(self, exchange: Exchange, request: TranscriptionRequest) -> None:
        samples, rate = await self._decode_audio(request)
        self.metrics.upload_audio(len(samples) / rate)
        file_request = FileRequest(nbest=request.nbest, hotwords=request.hotwords, language=request.language)
        if request.stream:
            await self._stream_events(exchange, samples, rate, file_request)
            return
        transcript = await self._decode(exchange, samples, rate, file_request)
        language = language_name(transcript.language, request.language)
        content_type, payload = render_transcript(
            transcript_from_result(transcript.result, transcript.duration, language), request
        )
        await exchange.respond(200, payload, [("content-type", content_type)])

    async def _decode_audio(self, request: TranscriptionRequest) -> tuple[np.ndarray, int]:
        limit = self.config.max_upload_seconds
        try:
            samples, rate = await trio.to_thread.run_sync(
                partial(decode_audio, request.audio, request.filename, max_seconds=limit, mono=True))
        except UnsupportedAudioFormat as exc:
            raise ApiError(415, str(exc), param="file", code="unsupported_format") from None
        except AudioTooLong as exc:
            raise ApiError(413, f"{exc} (--max-upload-seconds)", param="file", code="audio_too_long") from None
        except AudioFileError as exc:
            raise ApiError(400, str(exc), param="file", code="invalid_audio") from None
        if len(samples) == 0:
            raise ApiError(400, f"{request.filename}: the file holds no audio", param="file", code="invalid_audio")
        if rate != self.transcriber.sample_rate and not MIN_RATE <= rate <= MAX_RATE:
            raise ApiError(400, f"{request.filename}: audio at {rate} Hz cannot be resampled (it takes "
                           f"{MIN_RATE} to {MAX_RATE} Hz)", param="file", code="invalid_audio")  # fmt: skip
        return samples, rate

    async def _decode(
        self, exchange: Exchange, samples: np.ndarray, rate: int, request: FileRequest,
        on_segment: SegmentSink | None = None,
    ) -> FileTranscript:  # fmt: skip
        try:
            found = await self._unless_stopped(
                partial(self.transcriber.transcribe, samples, rate, request, on_segment, client=exchange.peer)
            )
        except HotwordError as exc:
            raise ApiError(400, str(exc), param="hotwords") from None
        except CompileQueueFull:
            raise ApiError(503, "server busy compiling hotwords; retry shortly", type="server_error",
                           code="overloaded") from None  # fmt: skip
        except (SecondPassError, ModelServiceError) as exc:
            log.error("upload from %s failed: %s", exchange.peer, exc)
            raise ApiError(500, "decoding failed on the server; see its log", type="server_error") from None
        if found is None:
            raise ApiError(503, "the server is shutting down: this upload was not decoded in time; send it again "
                           "(to another server)", type="server_error", code="shutting_down")  # fmt: skip
        return found

    async def _unless_stopped(self, decode: Callable[[], Awaitable[FileTranscript]]) -> FileTranscript | None:
        """``decode()``, or None if the server stops (its grace period over)
        first.  What ``decode()`` raises comes out as it is, not wrapped in
        the nursery's exception group, so callers can tell errors apart."""
        lifecycle = self.lifecycle
        found: FileTranscript | None = None
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:

            async def cancel_on_stop() -> None:
                while lifecycle is not None and not lifecycle.stopping:
                    await lifecycle.wait_changed()
                nursery.cancel_scope.cancel()

            if lifecycle is not None:
                nursery.start_soon(cancel_on_stop)
            try:
                found = await decode()
            except Exception as exc:  # Cancelled (a BaseException) goes to the nursery
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return found

    async def _stream_events(
        self, exchange: Exchange, samples: np.ndarray, rate: int, file_request: FileRequest
    ) -> None:
        await exchange.start_response(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")])
        so_far = ""

        async def say(text: str) -> None:
            nonlocal so_far
            joined = join_texts(so_far, text)
            delta, so_far = joined[len(so_far) :], joined
            await exchange.send(text_delta_event(delta))

        transcript = await self._decode(exchange, samples, rate, file_request, say)
        await exchange.send(text_done_event(transcript.result.text))
        await exchange.end_response()
