# The hotword automaton of the CTC prefix beam search: included into ctc.pyx
# (its core reads the arrays without the GIL), built by trio_asr.recognition.hotwords.

ctypedef struct Automaton:
    Py_ssize_t num_states
    Py_ssize_t vocab_size
    int32_t* fail         # per state: its longest proper suffix that is a state
    int32_t* child_start  # per state: its children are [child_start[s], child_start[s + 1])
    int32_t* child_token  # ... sorted by token
    int32_t* child_state
    int32_t* root_next    # per token: the root's child by it, or 0 (the root)
    double* root_gain     # per root edge: gain + at_risk of the child it leads to
    double* at_risk       # per state: bonus of a phrase under way, taken back if it breaks off
    double* gain          # per state: bonus kept from now on when the state is entered
    double* bound         # per state: most that gain + at_risk can be after any one token


cdef inline int32_t _goto(const Automaton* a, int32_t s, int32_t c) noexcept nogil:
    """The state after token ``c`` from state ``s`` (Aho-Corasick transition)."""
    cdef Py_ssize_t lo, hi, mid
    while s:
        lo = a.child_start[s]
        hi = a.child_start[s + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if a.child_token[mid] < c:
                lo = mid + 1
            else:
                hi = mid
        if lo < a.child_start[s + 1] and a.child_token[lo] == c:
            return a.child_state[lo]
        s = a.fail[s]
    return a.root_next[c]


cdef class HotwordGraph:
    """A compiled hotword automaton over a token table of ``vocab_size``
    tokens, read-only once built, so any number of searches (in any threads)
    can share it.  Build it with ``trio_asr.recognition.hotwords.compile_hotwords``; the
    arrays are checked here so that no input can make a search read out of
    bounds or loop: states are numbered so that ``fail[s] < s`` (breadth
    first), state 0 is the root.
    """

    cdef Automaton a
    cdef readonly Py_ssize_t num_states
    cdef readonly Py_ssize_t vocab_size

    def __cinit__(self, fail, child_start, child_token, child_state, at_risk, gain, bound,
                  Py_ssize_t vocab_size):
        cdef Py_ssize_t s, k, n
        fail = np.ascontiguousarray(fail, dtype=np.int32)
        child_start = np.ascontiguousarray(child_start, dtype=np.int32)
        child_token = np.ascontiguousarray(child_token, dtype=np.int32)
        child_state = np.ascontiguousarray(child_state, dtype=np.int32)
        at_risk = np.ascontiguousarray(at_risk, dtype=np.float64)
        gain = np.ascontiguousarray(gain, dtype=np.float64)
        bound = np.ascontiguousarray(bound, dtype=np.float64)
        n = len(fail)
        edges = len(child_token)
        if n < 1 or vocab_size < 1:
            raise ValueError("a hotword graph needs a root state and a vocabulary")
        if not (child_start.shape == (n + 1,) and child_state.shape == (edges,)
                and at_risk.shape == gain.shape == bound.shape == (n,)):
            raise ValueError("hotword graph arrays disagree in length")
        if child_start[0] != 0 or child_start[n] != edges or np.any(np.diff(child_start) < 0):
            raise ValueError("hotword graph child_start is not a partition of the edges")
        if fail[0] != 0 or np.any(fail[1:] < 0) or np.any(fail[1:] >= np.arange(1, n)):
            raise ValueError("hotword graph fail links must point to earlier states")
        if edges and (child_token.min() < 0 or child_token.max() >= vocab_size
                      or child_state.min() < 1 or child_state.max() >= n):
            raise ValueError("hotword graph edges out of range")
        edge_state = np.repeat(np.arange(n), np.diff(child_start))
        if np.any(np.diff(child_token)[np.diff(edge_state) == 0] <= 0):
            raise ValueError("hotword graph children must be sorted and distinct")
        if not (np.all(np.isfinite(at_risk)) and np.all(np.isfinite(gain)) and np.all(np.isfinite(bound))):
            raise ValueError("hotword graph scores must be finite")
        root_next = np.zeros(vocab_size, dtype=np.int32)
        root_next[child_token[:child_start[1]]] = child_state[:child_start[1]]
        self.num_states = n
        self.vocab_size = vocab_size
        self.a.num_states = n
        self.a.vocab_size = vocab_size
        self.a.fail = <int32_t*>_copy(fail)
        self.a.child_start = <int32_t*>_copy(child_start)
        self.a.child_token = <int32_t*>_copy(child_token)
        self.a.child_state = <int32_t*>_copy(child_state)
        self.a.root_next = <int32_t*>_copy(root_next)
        self.a.at_risk = <double*>_copy(at_risk)
        self.a.gain = <double*>_copy(gain)
        self.a.bound = <double*>_copy(bound)
        root_gain = gain[child_state[:child_start[1]]] + at_risk[child_state[:child_start[1]]]
        self.a.root_gain = <double*>_copy(np.ascontiguousarray(root_gain))

    def __dealloc__(self):
        free(self.a.fail); free(self.a.child_start); free(self.a.child_token)
        free(self.a.child_state); free(self.a.root_next)
        free(self.a.at_risk); free(self.a.gain); free(self.a.bound); free(self.a.root_gain)

    def walk(self, tokens):
        """``(state, kept, at_risk)`` after the token sequence ``tokens`` from
        the root: what a prefix spelling them holds (for tests and tools)."""
        cdef int32_t s = 0
        cdef double kept = 0.0
        for c in tokens:
            if not 0 <= c < self.vocab_size:
                raise ValueError(f"token {c} is outside the vocabulary of {self.vocab_size}")
            s = _goto(&self.a, s, c)
            kept += self.a.gain[s]
        return s, kept, self.a.at_risk[s]


cdef void* _copy(array) except NULL:
    """A malloc'd copy of a C-contiguous numpy array (at least one byte)."""
    cdef Py_ssize_t size = array.nbytes
    cdef void* p = malloc(size if size else 1)
    if p == NULL:
        raise MemoryError()
    if size:
        memcpy(p, <const void*><Py_ssize_t>array.ctypes.data, size)
    return p
