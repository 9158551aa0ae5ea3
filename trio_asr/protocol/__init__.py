"""The PaddleSpeech streaming-ASR protocol, sans-I/O.

The events and replies (:mod:`.messages`), the ``start`` message and its
limits (:mod:`.start`, :mod:`.limits`), the per-connection state machine
(:mod:`.connection`) and the replies of one stream built from recognition
results (:mod:`.replies`).  Nothing here does I/O.
"""
