# cython: language_level=3
"""Batching of per-stream model states (see ``trio_asr.recognition.model.ModelState``).

:func:`concatenate_states` is ``np.concatenate`` for every state tensor at
once, with the interpreter lock released **once** for all the copying.
``np.concatenate`` releases and retakes the lock for each of the ~75
tensors, and a thread that wants the lock back while the event loop holds it
waits for the loop's switch interval (5 ms by default): stacking a batch in a
model thread could then take a second instead of a few milliseconds.
"""

import numpy as np

cimport numpy as cnp
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cnp.import_array()


def concatenate_states(per_stream, batch_axes):
    """Concatenate ``per_stream[n][i]`` over ``n`` along ``batch_axes[i]``,
    for every tensor ``i``: the batched tensors, C-contiguous.

    Every stream's tensor ``i`` must be a numeric array in native byte order,
    of the same shape and dtype for every stream, with size 1 along its batch
    axis (ValueError otherwise, before anything is copied)."""
    # Our own references to every array: the copy runs without the lock, so
    # nothing the caller does meanwhile may free what it reads.
    per_stream = [tuple([tensors[i] for i in range(len(tensors))]) for tensors in per_stream]
    batch_axes = tuple(batch_axes)
    cdef Py_ssize_t batch = len(per_stream), count = len(batch_axes)
    cdef Py_ssize_t i, n, o, j, axis
    if batch == 0:
        raise ValueError("no states to concatenate")
    for n in range(batch):
        if len(per_stream[n]) != count:
            raise ValueError(f"stream {n} has {len(per_stream[n])} state tensors, expected {count}")
    if count == 0:
        return []
    # per (tensor, stream): where its blocks start and the step between them;
    # per tensor: the output, how many blocks, the bytes of one
    cdef char **src = <char **>malloc(count * batch * sizeof(char *))
    cdef Py_ssize_t *src_step = <Py_ssize_t *>malloc(count * batch * sizeof(Py_ssize_t))
    cdef char **dst = <char **>malloc(count * sizeof(char *))
    cdef Py_ssize_t *blocks = <Py_ssize_t *>malloc(count * sizeof(Py_ssize_t))
    cdef Py_ssize_t *block_bytes = <Py_ssize_t *>malloc(count * sizeof(Py_ssize_t))
    cdef cnp.ndarray first, tensor, out
    outputs = []
    copies = []  # contiguous copies of odd layouts, alive until copied
    try:
        if not (src and src_step and dst and blocks and block_bytes):
            raise MemoryError()
        for i in range(count):
            first = per_stream[0][i]
            shape = (<object>first).shape
            axis = batch_axes[i]
            if axis < 0:
                axis += first.ndim
            if not 0 <= axis < first.ndim or shape[axis] != 1:
                raise ValueError(f"state tensor {i} of shape {shape} has no batch axis {batch_axes[i]} of size 1")
            if first.dtype.kind not in "biufc" or not first.dtype.isnative:
                raise ValueError(f"state tensor {i} holds {first.dtype}, not plain numbers")
            out = np.empty(shape[:axis] + (batch,) + shape[axis + 1 :], first.dtype)
            outputs.append(out)
            dst[i] = <char *>cnp.PyArray_DATA(out)
            blocks[i] = 1
            for j in range(axis):
                blocks[i] *= first.shape[j]
            block_bytes[i] = first.itemsize
            for j in range(axis + 1, first.ndim):
                block_bytes[i] *= first.shape[j]
            for n in range(batch):
                tensor = per_stream[n][i]
                if (<object>tensor).shape != shape or tensor.dtype != first.dtype:
                    raise ValueError(
                        f"state tensor {i}: stream {n} has {tensor.dtype}{(<object>tensor).shape}, "
                        f"stream 0 {first.dtype}{shape}"
                    )
                if not _evenly_spaced_blocks(tensor, axis, &src_step[i * batch + n]):
                    tensor = np.ascontiguousarray(tensor)
                    copies.append(tensor)
                    assert _evenly_spaced_blocks(tensor, axis, &src_step[i * batch + n])
                src[i * batch + n] = <char *>cnp.PyArray_DATA(tensor)
        with nogil:
            for i in range(count):
                for n in range(batch):
                    for o in range(blocks[i]):
                        memcpy(
                            dst[i] + (o * batch + n) * block_bytes[i],
                            src[i * batch + n] + o * src_step[i * batch + n],
                            block_bytes[i],
                        )
    finally:
        free(src)
        free(src_step)
        free(dst)
        free(blocks)
        free(block_bytes)
    return outputs


cdef bint _evenly_spaced_blocks(cnp.ndarray tensor, Py_ssize_t axis, Py_ssize_t *step):
    """Whether ``tensor`` is a sequence of equally spaced C-contiguous blocks:
    the axes after ``axis`` contiguous, those before it ``step`` bytes apart
    per block (a slice along ``axis`` of a C-contiguous array is)."""
    cdef Py_ssize_t j, expected = tensor.itemsize, spanned = 1
    cdef bint found = False
    step[0] = 0
    if cnp.PyArray_SIZE(tensor) == 0:
        return True  # nothing to copy, whatever its strides
    for j in range(tensor.ndim - 1, axis, -1):
        if tensor.shape[j] > 1 and tensor.strides[j] != expected:
            return False
        expected *= tensor.shape[j]
    for j in range(axis - 1, -1, -1):
        if tensor.shape[j] == 1:
            continue  # its stride means nothing
        if not found:
            step[0] = tensor.strides[j]
            found = True
        elif tensor.strides[j] != step[0] * spanned:
            return False
        spanned *= tensor.shape[j]
    return True
