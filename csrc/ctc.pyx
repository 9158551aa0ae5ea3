# cython: language_level=3
"""Compiled core of the CTC prefix beam search (see ``trio_asr.recognition.search``).

The beam is a handful of rows, each a prefix with two log probabilities:
``pb`` (all alignments so far that spell the prefix and end in blank) and
``pnb`` (those ending in the prefix's last token).  A prefix is a node of a
tree stored in growable C arrays (parent, token, emission frame, depth, hash):
extending a prefix is one appended node, and a hypothesis is read back by
walking parents.  A node records one *creation* of a prefix, so two nodes can
spell the same tokens with different emission frames (a prefix that fell out
of the beam and was grown again later); prefix identity is therefore decided
on the token sequence (hash, then an exact walk), never on the node index.

Per frame, every row

* stays (reads blank, or repeats its last token),
* grows by a token ``c`` (after its own last token only from ``pb``), and
* a growth that spells a prefix already in the beam is added to that row
  instead of becoming a candidate, which keeps the beam's prefixes distinct.

The new beam is the best ``beam`` candidates, ties broken by generation order
(stays by row, then growths by parent row and token rank), which is the same
whatever way the stream was cut into blocks.  Only a few top tokens of a frame
can win: a row's growths rank like the tokens' log probabilities, at most
``1 + children`` of them are excluded (its repeat and the merges), so the
``beam + 1 + most children`` best tokens are enough, and a row's scan stops
at the first growth that cannot enter the candidate heap.  Exactness is unaffected.

With hotwords (a ``HotwordGraph``, compiled by ``trio_asr.recognition.hotwords``) every
node also holds its automaton state and the bonus it has *kept* (completed
phrases); a row ranks by its CTC log probability plus its bonus, which is the
kept part plus the *at-risk* part of its state (a phrase under way).  Both are
functions of the token sequence alone, so merging equal prefixes stays exact.
The bonus bends the token order of a row's growths only for the tokens that
move the automaton somewhere other than its root: the children of the row's
state and of its suffix states, offered one by one, and the root's children,
read best first in the order of log probability plus bonus (a second list
per frame, like the list of best tokens).  Every other token ranks as
before, and the list of best tokens is long enough as before: a token the
scan skips because it moves the automaton was offered (or refused) with at
least the score of any later token.  The root's children that a row skips
(its repeat, merges, and children of a deeper suffix state, offered there
with that state's bonus) are not bounded by the beam, so a root list that
runs out before the row's scan stops is doubled (once per frame, shared by
the rows after it).

Nodes no row can reach are dropped by a compaction when the tree has doubled
since the last one, so memory stays proportional to the hypotheses' length.
All per-frame work runs without the GIL; an instance must not be used by two
threads at once.
"""

from libc.math cimport INFINITY, exp, log1p
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcpy, memset

import numpy as np

ctypedef fused real:
    float
    double

cdef enum:
    # Compaction never runs below this many nodes (it would be all overhead).
    MIN_GC_NODES = 4096

# The widest beam accepted: per-frame work and memory grow with it, and
# every size derived from it stays far from any integer limit.
MAX_BEAM = 10_000


cdef inline double _log_add(double a, double b) noexcept nogil:
    """log(exp(a) + exp(b)), exact at -inf."""
    if a < b:
        a, b = b, a
    if b == -INFINITY:
        return a
    return a + log1p(exp(b - a))


cdef inline uint64_t _extend_hash(uint64_t h, int32_t token) noexcept nogil:
    h = (h ^ <uint64_t>(token + 1)) * 0x9E3779B97F4A7C15ULL
    return h ^ (h >> 29)


ctypedef struct Candidate:
    double score
    int64_t seq      # generation order: the tie-breaker
    Py_ssize_t row   # the row that stays, or the parent row that grows
    int32_t token    # -1 for a stay, else the token the row grows by


cdef inline bint _worse(const Candidate* a, const Candidate* b) noexcept nogil:
    return a.score < b.score or (a.score == b.score and a.seq > b.seq)


cdef int _best_first(const void* a, const void* b) noexcept nogil:
    if _worse(<const Candidate*>b, <const Candidate*>a):
        return -1
    if _worse(<const Candidate*>a, <const Candidate*>b):
        return 1
    return 0


cdef struct Heap:
    # A min-heap of at most `capacity` candidates, its root the worst one.
    Candidate* items
    Py_ssize_t size
    Py_ssize_t capacity


cdef inline void _sift_down(Heap* heap, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t child
    cdef Candidate item = heap.items[i]
    while True:
        child = 2 * i + 1
        if child >= heap.size:
            break
        if child + 1 < heap.size and _worse(&heap.items[child + 1], &heap.items[child]):
            child += 1
        if not _worse(&heap.items[child], &item):
            break
        heap.items[i] = heap.items[child]
        i = child
    heap.items[i] = item


cdef inline bint _refused(Heap* heap, double score) noexcept nogil:
    """Whether a candidate with this score, generated after all in the heap,
    would be refused (so would every later one of no higher score)."""
    return heap.size == heap.capacity and score <= heap.items[0].score


cdef inline void _offer(Heap* heap, double score, int64_t seq, Py_ssize_t row, int32_t token) noexcept nogil:
    cdef Candidate item
    cdef Py_ssize_t i, parent
    if score == -INFINITY:
        return
    item.score = score
    item.seq = seq
    item.row = row
    item.token = token
    if heap.size < heap.capacity:
        i = heap.size
        heap.size += 1
        while i > 0:
            parent = (i - 1) // 2
            if not _worse(&item, &heap.items[parent]):
                break
            heap.items[i] = heap.items[parent]
            i = parent
        heap.items[i] = item
    elif _worse(&heap.items[0], &item):
        heap.items[0] = item
        _sift_down(heap, 0)


cdef inline bint _token_before(const real* row, int32_t a, int32_t b) noexcept nogil:
    """Token order of a frame: more probable first, then lower id."""
    return row[a] > row[b] or (row[a] == row[b] and a < b)


cdef Py_ssize_t _top_tokens(const real* row, Py_ssize_t vocab, int32_t blank, bint use_threshold,
                            double threshold, Py_ssize_t limit, int32_t* out) noexcept nogil:
    """Write the best ``limit`` non-blank tokens passing the threshold to
    ``out``, best first; return how many there are.  ``out`` is used as a
    heap (root: the worst kept) while scanning, then sorted in place."""
    cdef Py_ssize_t size = 0, i, child, end
    cdef int32_t c, item
    cdef double worst = -INFINITY  # log probability of the root once full
    if limit <= 0:
        return 0
    for c in range(vocab):
        if row[c] < worst:  # the common case, kept branch-light
            continue
        if c == blank or (use_threshold and not row[c] >= threshold):
            continue
        if size == limit:
            if not _token_before(row, c, out[0]):
                continue
            i = 0  # replace the root, sift down
            while True:
                child = 2 * i + 1
                if child >= size:
                    break
                if child + 1 < size and _token_before(row, out[child], out[child + 1]):
                    child += 1
                if not _token_before(row, c, out[child]):
                    break
                out[i] = out[child]
                i = child
            out[i] = c
            worst = row[out[0]]
        else:
            i = size
            size += 1
            while i > 0 and _token_before(row, out[(i - 1) // 2], c):
                out[i] = out[(i - 1) // 2]
                i = (i - 1) // 2
            out[i] = c
            if size == limit:
                worst = row[out[0]]
    # Heap sort: repeatedly move the worst to the end, leaving best first.
    end = size - 1
    while end > 0:
        item = out[end]
        out[end] = out[0]
        i = 0
        while True:
            child = 2 * i + 1
            if child >= end:
                break
            if child + 1 < end and _token_before(row, out[child], out[child + 1]):
                child += 1
            if not _token_before(row, item, out[child]):
                break
            out[i] = out[child]
            i = child
        out[i] = item
        end -= 1
    return size


include "hotword_graph.pxi"


cdef inline int _grow(void** array, size_t size) noexcept nogil:
    """``realloc`` ``array[0]`` to ``size`` bytes in place; -1 (array unchanged) when out of memory."""
    cdef void* p = realloc(array[0], size)
    if p == NULL:
        return -1
    array[0] = p
    return 0


cdef class PrefixBeamCore:
    """Streaming CTC prefix beam search state; the user-facing checks live
    in ``trio_asr.recognition.search.PrefixBeamSearch``, what memory safety needs is
    checked here too (beam width, vocabulary width, row index).  ``top_k`` 0
    and ``use_threshold`` False switch those prunings off; ``hotwords`` biases
    the search (see the module docstring) and fixes the vocabulary width."""

    cdef readonly int beam
    cdef readonly int blank_id
    cdef int top_k
    cdef bint use_threshold
    cdef double threshold
    cdef readonly int64_t num_frames
    cdef Py_ssize_t vocab  # fixed by the first frames (or the hotwords); -1 before
    cdef HotwordGraph graph
    cdef const Automaton* hw  # NULL without hotwords

    # The tree of prefixes; node 0 is the empty prefix.
    cdef int64_t* parent
    cdef int32_t* token
    cdef int64_t* frame
    cdef int64_t* depth
    cdef uint64_t* hash
    cdef int32_t* hw_state  # with hotwords: the automaton state of the prefix
    cdef double* kept       # ... and the bonus of its completed phrases
    cdef readonly Py_ssize_t num_nodes
    cdef Py_ssize_t node_capacity
    cdef Py_ssize_t gc_at

    # The beam: `rows` rows, best first, and room for the next one.
    cdef Py_ssize_t rows
    cdef int64_t* node
    cdef double* pb
    cdef double* pnb
    cdef int64_t* next_node
    cdef double* next_pb
    cdef double* next_pnb
    cdef double* stay_pb    # this frame's stay of each row
    cdef double* stay_pnb

    # Per-frame scratch.
    cdef Heap heap
    cdef int32_t* tokens        # the frame's best tokens
    cdef Py_ssize_t tokens_capacity
    cdef Py_ssize_t n_listed    # ... how many there are this frame
    cdef int32_t* root_list     # with hotwords: root edges, best log probability + bonus first
    cdef double* root_keys      # ... their keys this frame
    cdef Py_ssize_t n_root_listed, root_limit  # ... -1: not listed yet this frame
    cdef unsigned char* merged  # per token: a growth of the current row merges
    cdef Py_ssize_t vocab_capacity
    cdef int64_t* child_head    # per row: first row that extends it by one token
    cdef int64_t* child_next
    cdef int64_t* slots         # open-addressing table: prefix hash -> row
    cdef Py_ssize_t slot_mask

    def __cinit__(self, Py_ssize_t beam, int blank_id, int top_k, bint use_threshold, double threshold,
                  HotwordGraph hotwords=None):
        cdef Py_ssize_t slots = 1
        if not 1 <= beam <= MAX_BEAM:
            raise ValueError(f"beam must be between 1 and {MAX_BEAM}, got {beam}")
        if blank_id < 0 or top_k < 0:
            raise ValueError("blank_id and top_k must be >= 0")
        self.vocab = -1
        if hotwords is not None:
            if blank_id >= hotwords.vocab_size:
                raise ValueError(f"blank_id {blank_id} is outside the hotwords' vocabulary of {hotwords.vocab_size}")
            self.graph = hotwords
            self.hw = &hotwords.a
            self.vocab = hotwords.vocab_size
            self.root_list = <int32_t*>malloc((hotwords.a.child_start[1] + 1) * sizeof(int32_t))
            self.root_keys = <double*>malloc((hotwords.a.child_start[1] + 1) * sizeof(double))
            if not (self.root_list and self.root_keys):
                raise MemoryError()
        self.beam = <int>beam
        self.blank_id = blank_id
        self.top_k = top_k
        self.use_threshold = use_threshold
        self.threshold = threshold
        while slots < 2 * beam:  # Py_ssize_t, and beam <= MAX_BEAM
            slots *= 2
        self.slot_mask = slots - 1
        self.slots = <int64_t*>malloc(slots * sizeof(int64_t))
        self.node = <int64_t*>malloc(beam * sizeof(int64_t))
        self.next_node = <int64_t*>malloc(beam * sizeof(int64_t))
        self.child_head = <int64_t*>malloc(beam * sizeof(int64_t))
        self.child_next = <int64_t*>malloc(beam * sizeof(int64_t))
        self.pb = <double*>malloc(beam * sizeof(double))
        self.pnb = <double*>malloc(beam * sizeof(double))
        self.next_pb = <double*>malloc(beam * sizeof(double))
        self.next_pnb = <double*>malloc(beam * sizeof(double))
        self.stay_pb = <double*>malloc(beam * sizeof(double))
        self.stay_pnb = <double*>malloc(beam * sizeof(double))
        self.heap.items = <Candidate*>malloc(beam * sizeof(Candidate))
        self.heap.capacity = beam
        if not (self.slots and self.node and self.next_node and self.child_head and self.child_next
                and self.pb and self.pnb and self.next_pb and self.next_pnb and self.stay_pb
                and self.stay_pnb and self.heap.items):
            raise MemoryError()
        if self._reserve_nodes(MIN_GC_NODES) < 0:
            raise MemoryError()
        self.gc_at = MIN_GC_NODES
        self.parent[0] = -1
        self.token[0] = -1
        self.frame[0] = -1
        self.depth[0] = 0
        self.hash[0] = 0
        if self.hw:
            self.hw_state[0] = 0
            self.kept[0] = 0.0
        self.num_nodes = 1
        self.rows = 1
        self.node[0] = 0
        self.pb[0] = 0.0
        self.pnb[0] = -INFINITY

    def __dealloc__(self):
        free(self.parent); free(self.token); free(self.frame); free(self.depth); free(self.hash)
        free(self.node); free(self.pb); free(self.pnb)
        free(self.next_node); free(self.next_pb); free(self.next_pnb)
        free(self.stay_pb); free(self.stay_pnb); free(self.heap.items)
        free(self.tokens); free(self.merged); free(self.child_head); free(self.child_next)
        free(self.slots); free(self.hw_state); free(self.kept); free(self.root_list); free(self.root_keys)

    cdef int _reserve_nodes(self, Py_ssize_t needed) noexcept nogil:
        """Room for ``needed`` nodes in all node arrays; -1 when out of memory."""
        cdef Py_ssize_t capacity = self.node_capacity if self.node_capacity else 1
        if needed <= self.node_capacity:
            return 0
        while capacity < needed:
            capacity *= 2
        if (_grow(<void**>&self.parent, capacity * sizeof(int64_t))
                or _grow(<void**>&self.token, capacity * sizeof(int32_t))
                or _grow(<void**>&self.frame, capacity * sizeof(int64_t))
                or _grow(<void**>&self.depth, capacity * sizeof(int64_t))
                or _grow(<void**>&self.hash, capacity * sizeof(uint64_t))):
            return -1
        if self.hw and (_grow(<void**>&self.hw_state, capacity * sizeof(int32_t))
                        or _grow(<void**>&self.kept, capacity * sizeof(double))):
            return -1
        self.node_capacity = capacity
        return 0

    cdef int _reserve_scratch(self, Py_ssize_t vocab) noexcept nogil:
        """Per-token scratch for a vocabulary of ``vocab``; -1 when out of memory."""
        cdef Py_ssize_t limit = self.top_k if self.top_k else 2 * <Py_ssize_t>self.beam + 1  # see _step
        if limit > vocab:
            limit = vocab
        if limit > self.tokens_capacity:
            if _grow(<void**>&self.tokens, limit * sizeof(int32_t)):
                return -1
            self.tokens_capacity = limit
        if vocab > self.vocab_capacity:
            if _grow(<void**>&self.merged, vocab):
                return -1
            memset(self.merged, 0, vocab)
            self.vocab_capacity = vocab
        return 0

    cdef bint _same_prefix(self, int64_t a, int64_t b) noexcept nogil:
        """Whether nodes ``a`` and ``b`` spell the same tokens."""
        if self.depth[a] != self.depth[b] or self.hash[a] != self.hash[b]:
            return False
        while a != b:
            if self.token[a] != self.token[b]:
                return False
            a = self.parent[a]
            b = self.parent[b]
        return True

    cdef Py_ssize_t _link_children(self) noexcept nogil:
        """For every row whose prefix minus its last token is also a row, link
        it into that row's list (``child_head``/``child_next``); return the
        most children a row has."""
        cdef Py_ssize_t i, j, slot, count, most = 0
        cdef int64_t q
        for i in range(self.slot_mask + 1):
            self.slots[i] = -1
        for i in range(self.rows):
            self.child_head[i] = -1
            slot = self.hash[self.node[i]] & self.slot_mask
            while self.slots[slot] >= 0:
                slot = (slot + 1) & self.slot_mask
            self.slots[slot] = i
        for j in range(self.rows):
            self.child_next[j] = -1
            q = self.parent[self.node[j]]
            if q < 0:
                continue
            slot = self.hash[q] & self.slot_mask
            while self.slots[slot] >= 0:
                i = self.slots[slot]
                if self._same_prefix(self.node[i], q):
                    self.child_next[j] = self.child_head[i]
                    self.child_head[i] = j
                    break
                slot = (slot + 1) & self.slot_mask
        for i in range(self.rows):
            count = 0
            j = self.child_head[i]
            while j >= 0:
                count += 1
                j = self.child_next[j]
            most = max(most, count)
        return most

    cdef int _step(self, const real* row, Py_ssize_t vocab) noexcept nogil:
        """Advance the beam by one frame; -1 when out of memory."""
        cdef Py_ssize_t i, j, k, n_tokens, limit
        cdef int64_t n, seq
        cdef int32_t c, last, cutoff = -1
        cdef double total, score, blank_lp = row[self.blank_id]
        cdef Candidate* item

        # A row takes at most `beam` growths, skipping its repeat and merges
        # (hotwords change which, not how many: see _grow_biased).
        limit = self.beam + 1 + self._link_children()
        if self.top_k:
            limit = self.top_k  # all of them, to know the last one
        limit = min(limit, vocab)
        n_tokens = _top_tokens(row, vocab, self.blank_id, self.use_threshold, self.threshold,
                               limit, self.tokens)
        if self.top_k and n_tokens == self.top_k:
            cutoff = self.tokens[n_tokens - 1]  # a token ranked after it is pruned
        self.n_listed = n_tokens
        self.n_root_listed = -1

        # Stays, with the growths that land on another row merged in.
        for i in range(self.rows):
            n = self.node[i]
            self.stay_pb[i] = _log_add(self.pb[i], self.pnb[i]) + blank_lp
            self.stay_pnb[i] = self.pnb[i] + row[self.token[n]] if n else -INFINITY
        for i in range(self.rows):
            last = self.token[self.node[i]]
            j = self.child_head[i]
            while j >= 0:
                c = self.token[self.node[j]]
                if self._candidate(row, c, cutoff):
                    score = (self.pb[i] if c == last else _log_add(self.pb[i], self.pnb[i])) + row[c]
                    self.stay_pnb[j] = _log_add(self.stay_pnb[j], score)
                j = self.child_next[j]

        self.heap.size = 0
        for i in range(self.rows):
            score = _log_add(self.stay_pb[i], self.stay_pnb[i])
            if self.hw:
                n = self.node[i]
                score += self.kept[n] + self.hw.at_risk[self.hw_state[n]]
            _offer(&self.heap, score, i, i, -1)

        # Growths, best tokens first; a row's scan ends at its first refusal.
        seq = self.rows
        for i in range(self.rows):
            n = self.node[i]
            last = self.token[n] if n else -1
            j = self.child_head[i]
            while j >= 0:
                self.merged[self.token[self.node[j]]] = 1
                j = self.child_next[j]
            if self.hw:
                seq = self._grow_biased(row, i, last, cutoff, seq)
            else:
                if last >= 0 and not self.merged[last] and self._candidate(row, last, cutoff):
                    _offer(&self.heap, self.pb[i] + row[last], seq, i, last)
                    seq += 1
                total = _log_add(self.pb[i], self.pnb[i])
                for k in range(n_tokens):
                    c = self.tokens[k]
                    if c == last or self.merged[c]:
                        continue
                    score = total + row[c]
                    if score == -INFINITY or _refused(&self.heap, score):
                        break
                    _offer(&self.heap, score, seq, i, c)
                    seq += 1
            j = self.child_head[i]
            while j >= 0:
                self.merged[self.token[self.node[j]]] = 0
                j = self.child_next[j]

        # The survivors, best first, become the next beam.
        qsort(self.heap.items, self.heap.size, sizeof(Candidate), _best_first)
        if self._reserve_nodes(self.num_nodes + self.heap.size) < 0:
            return -1
        for k in range(self.heap.size):
            item = &self.heap.items[k]
            i = item.row
            if item.token < 0:
                self.next_node[k] = self.node[i]
                self.next_pb[k] = self.stay_pb[i]
                self.next_pnb[k] = self.stay_pnb[i]
            else:
                n = self.num_nodes
                self.num_nodes += 1
                self.parent[n] = self.node[i]
                self.token[n] = item.token
                self.frame[n] = self.num_frames
                self.depth[n] = self.depth[self.node[i]] + 1
                self.hash[n] = _extend_hash(self.hash[self.node[i]], item.token)
                if self.hw:
                    self.hw_state[n] = _goto(self.hw, self.hw_state[self.node[i]], item.token)
                    self.kept[n] = self.kept[self.node[i]] + self.hw.gain[self.hw_state[n]]
                self.next_node[k] = n
                self.next_pb[k] = -INFINITY
                # The heap ranked the growth with its bonus; the beam keeps CTC only.
                self.next_pnb[k] = ((self.pb[i] if item.token == self.token[self.node[i]] and self.node[i]
                                     else _log_add(self.pb[i], self.pnb[i])) + row[item.token]
                                    if self.hw else item.score)
        self.rows = self.heap.size
        self.node, self.next_node = self.next_node, self.node
        self.pb, self.next_pb = self.next_pb, self.pb
        self.pnb, self.next_pnb = self.next_pnb, self.pnb
        self.num_frames += 1
        if self.num_nodes >= self.gc_at:
            return self._compact()
        return 0

    cdef int64_t _grow_biased(self, const real* row, Py_ssize_t i, int32_t last, int32_t cutoff,
                              int64_t seq) noexcept nogil:
        """Offer row ``i``'s growths with their hotword bonus; return the next
        ``seq``.  A growth by ``c`` scores ``CTC + kept + gain + at_risk`` of
        the state ``u`` it reaches: the children of the row's (non-root)
        suffix states one by one, then the root's children in key order
        (stop at the first refusal), then every other token (``u`` is the
        root, the score is ``CTC + kept``) in the frame's token order (see
        the module docstring for why the frame's list is long enough)."""
        cdef const Automaton* a = self.hw
        cdef int64_t n = self.node[i]
        cdef int32_t s = self.hw_state[n], f, c, u
        cdef double total, score
        cdef Py_ssize_t k, e, roots = a.child_start[1]
        if last >= 0 and not self.merged[last] and self._candidate(row, last, cutoff):
            u = _goto(a, s, last)
            _offer(&self.heap, self.pb[i] + row[last] + self.kept[n] + a.gain[u] + a.at_risk[u], seq, i, last)
            seq += 1
        total = _log_add(self.pb[i], self.pnb[i]) + self.kept[n]

        f = s
        while f:
            for e in range(a.child_start[f], a.child_start[f + 1]):
                c = a.child_token[e]
                u = a.child_state[e]
                if c == last or self.merged[c] or not self._candidate(row, c, cutoff) or _goto(a, s, c) != u:
                    continue  # the repeat, a merge, pruned, or a deeper suffix state's child
                score = total + row[c] + a.gain[u] + a.at_risk[u]
                if not _refused(&self.heap, score):
                    _offer(&self.heap, score, seq, i, c)
                    seq += 1
            f = a.fail[f]

        k = 0
        while True:
            if k == self.n_root_listed or self.n_root_listed < 0:
                if self.n_root_listed >= 0 and (self.n_root_listed < self.root_limit or self.root_limit >= roots):
                    break
                self._list_roots(row, cutoff)
                if k == self.n_root_listed:
                    break
            e = self.root_list[k]
            k += 1
            c = a.child_token[e]
            score = total + self.root_keys[e]
            if score == -INFINITY or _refused(&self.heap, score):
                break
            if c == last or self.merged[c] or not self._candidate(row, c, cutoff) or _goto(a, s, c) != a.child_state[e]:
                continue
            _offer(&self.heap, score, seq, i, c)
            seq += 1

        for k in range(self.n_listed):
            c = self.tokens[k]
            if c == last or self.merged[c]:
                continue
            score = total + row[c]
            if score == -INFINITY or _refused(&self.heap, score):
                break
            if _goto(a, s, c):
                continue  # a child of the row's state or a suffix state: offered above
            _offer(&self.heap, score, seq, i, c)
            seq += 1
        return seq

    cdef void _list_roots(self, const real* row, int32_t cutoff) noexcept nogil:
        """List this frame's best root edges by log probability + bonus (a
        pruned token last, at -inf): the first call of a frame lists
        ``2 * beam + 1`` of them, a later one twice as many."""
        cdef const Automaton* a = self.hw
        cdef Py_ssize_t e, roots = a.child_start[1]
        cdef int32_t c
        if self.n_root_listed < 0:
            for e in range(roots):
                c = a.child_token[e]
                self.root_keys[e] = row[c] + a.root_gain[e] if self._candidate(row, c, cutoff) else -INFINITY
            self.root_limit = min(2 * <Py_ssize_t>self.beam + 1, roots)
        else:
            self.root_limit = min(2 * self.root_limit, roots)
        self.n_root_listed = _top_tokens[double](self.root_keys, roots, -1, False, 0.0, self.root_limit,
                                                 self.root_list)

    cdef inline bint _candidate(self, const real* row, int32_t c, int32_t cutoff) noexcept nogil:
        """Whether token ``c`` may extend a prefix at this frame."""
        if c == self.blank_id:
            return False
        if self.use_threshold and not row[c] >= self.threshold:
            return False
        return cutoff < 0 or c == cutoff or _token_before(row, c, cutoff)

    cdef int _compact(self) noexcept nogil:
        """Drop the nodes no row reaches, keeping the order (parents first);
        -1 when out of memory."""
        cdef int64_t* new_index = <int64_t*>malloc(self.num_nodes * sizeof(int64_t))
        cdef Py_ssize_t i, kept = 0
        cdef int64_t n
        if new_index == NULL:
            return -1
        for i in range(self.num_nodes):
            new_index[i] = -1
        new_index[0] = 0
        for i in range(self.rows):
            n = self.node[i]
            while new_index[n] < 0:
                new_index[n] = 0
                n = self.parent[n]
        for i in range(self.num_nodes):
            if new_index[i] < 0:
                continue
            new_index[i] = kept
            self.parent[kept] = new_index[self.parent[i]] if i else -1
            self.token[kept] = self.token[i]
            self.frame[kept] = self.frame[i]
            self.depth[kept] = self.depth[i]
            self.hash[kept] = self.hash[i]
            if self.hw:
                self.hw_state[kept] = self.hw_state[i]
                self.kept[kept] = self.kept[i]
            kept += 1
        for i in range(self.rows):
            self.node[i] = new_index[self.node[i]]
        free(new_index)
        self.num_nodes = kept
        self.gc_at = max(2 * kept, MIN_GC_NODES)
        return 0

    def accept(self, const real[:, ::1] log_probs):
        """Advance by every frame (row) of ``log_probs`` (C-contiguous).  Its
        width must be the same in every call (the beam's tokens index it): the
        first block with frames fixes it unless hotwords did."""
        cdef Py_ssize_t t, frames = log_probs.shape[0], vocab = log_probs.shape[1]
        cdef int status = 0
        if self.vocab >= 0 and vocab != self.vocab:
            raise ValueError(f"log_probs have {vocab} tokens per frame, but this stream's have {self.vocab}")
        if frames == 0:
            return
        if self.blank_id >= vocab:
            raise ValueError(f"blank_id {self.blank_id} is outside a vocabulary of {vocab}")
        self.vocab = vocab
        with nogil:
            status = self._reserve_scratch(vocab)
            t = 0
            while status == 0 and t < frames:
                status = self._step(&log_probs[t, 0], vocab)
                t += 1
        if status < 0:
            raise MemoryError()

    def scores(self):
        """Score of every row, in beam order: its total log probability plus,
        with hotwords, the bonus of its completed phrases (never of a phrase
        still under way).  Without hotwords this is best first."""
        if self.hw:
            return np.array([_log_add(self.pb[i], self.pnb[i]) + self.kept[self.node[i]]
                             for i in range(self.rows)])
        return np.array([_log_add(self.pb[i], self.pnb[i]) for i in range(self.rows)])

    def prefix(self, Py_ssize_t i):
        """``(tokens, frames)`` of row ``i`` (``0 <= i < len(scores())``) as tuples of ints."""
        if not 0 <= i < self.rows:
            raise IndexError(f"row {i} is outside the beam of {self.rows} rows")
        cdef int64_t n = self.node[i]
        cdef Py_ssize_t k = self.depth[n]
        tokens = np.empty(k, dtype=np.int64)
        frames = np.empty(k, dtype=np.int64)
        cdef int64_t[::1] tv = tokens
        cdef int64_t[::1] fv = frames
        with nogil:
            while n > 0:
                k -= 1
                tv[k] = self.token[n]
                fv[k] = self.frame[n]
                n = self.parent[n]
        return tuple(tokens.tolist()), tuple(frames.tolist())
