"""What a model call costs per chunk, and by batch size whether batching pays.

A batched call usually costs less per chunk than one call per chunk, but not
always: an int8 model rewritten for per-item quantization (see
:mod:`trio_asr.recognition.model.quantization`) does work per item in a
batch that a single call, run on the file as exported, does not, and on a
machine whose int8 kernels are fast (VNNI) a batch of two to four costs more
per chunk there than as many single calls.  Where the break-even lies depends
on the model, the machine and the load, so it is measured, not configured.

:class:`BatchCosts` is the bookkeeping, with no I/O: the caller records each
call's CPU seconds and asks, before a call, whether a batch of some size
should run as single calls instead.  It keeps a running mean of the CPU per
chunk of the calls of each batch size up to ``max_tracked`` (single calls
included, however they came about) and says yes when single calls have cost
less per chunk than batches of that size; one such batch in
``remeasure_every`` runs batched anyway, so that the choice follows the costs
when they change.
"""

from __future__ import annotations

import attrs

from trio_asr.bounds import positive

__all__ = ["BatchCosts"]

#: how much of the cost per chunk each earlier call keeps, per call
_DECAY = 0.9
#: the same for the mean of one batch size: measured again only now and then
#: once split, so that the newest measurement counts for more
_SIZE_DECAY = 0.5


@attrs.define
class BatchCosts:
    """CPU seconds per chunk of recent model calls, overall and by batch size."""

    max_tracked: int = attrs.field(default=16, validator=positive)
    remeasure_every: int = attrs.field(default=16, validator=positive)
    # decayed sums over all calls, weighted by their chunks
    _cpu_seconds: float = attrs.field(default=0.0, init=False)
    _cpu_chunks: float = attrs.field(default=0.0, init=False)
    # batch size -> running mean of the CPU seconds per chunk of its calls
    _by_size: dict[int, float] = attrs.field(factory=dict, init=False)
    # batch size -> batches of that size run as single calls since it was last measured
    _split_since: dict[int, int] = attrs.field(factory=dict, init=False)

    @property
    def per_chunk(self) -> float | None:
        """CPU seconds per chunk over the recent calls, whatever their size
        (None until one is recorded)."""
        return self._cpu_seconds / self._cpu_chunks if self._cpu_chunks else None

    def per_chunk_at(self, size: int) -> float | None:
        """The running mean for calls of ``size`` chunks (None: not measured)."""
        return self._by_size.get(size)

    def record(self, chunks: int, cpu_seconds: float, *, split: bool = False) -> None:
        """One call's CPU seconds: ``chunks`` in one batch, or, ``split``, as
        that many single calls."""
        self._cpu_seconds = _DECAY * self._cpu_seconds + cpu_seconds
        self._cpu_chunks = _DECAY * self._cpu_chunks + chunks
        size = 1 if split else chunks
        if size > self.max_tracked:
            return
        cost = cpu_seconds / chunks
        before = self._by_size.get(size)
        self._by_size[size] = cost if before is None else _SIZE_DECAY * before + (1 - _SIZE_DECAY) * cost
        if not split:
            self._split_since.pop(size, None)

    def split(self, chunks: int) -> bool:
        """Whether a batch of ``chunks`` should run as single calls: they
        have cost less per chunk than batches of its size, or single calls
        have not been measured yet; not when batches of its size have not
        been, nor every ``remeasure_every``-th time."""
        if chunks <= 1 or chunks > self.max_tracked or chunks not in self._by_size:
            return False
        single = self._by_size.get(1)
        if single is not None and single >= self._by_size[chunks]:
            return False
        since = self._split_since.get(chunks, 0) + 1
        if since >= self.remeasure_every:
            return False  # record() of this batch resets the count
        self._split_since[chunks] = since
        return True
