"""Recognition: from samples to text, knowing nothing of the protocol.

Features (:mod:`.features`), acoustic models (:mod:`.model`), the CTC
searches (:mod:`.search`), endpoints and segments (:mod:`.endpoint`,
:mod:`.segments`), word times, hotwords, voice activity, the token table,
the per-stream :mod:`.recognizer`, and the batching :mod:`.model_service`
with the decode path that drives streams through it (:mod:`.batched`).
"""
