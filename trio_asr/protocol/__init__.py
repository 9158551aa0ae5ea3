"""The PaddleSpeech streaming-ASR protocol and OpenAI's transcription API, sans-I/O.

The events and replies (:mod:`.messages`), the ``start`` message and its
limits (:mod:`.start`, :mod:`.limits`), the per-connection state machine
(:mod:`.connection`) and the replies of one stream built from recognition
results (:mod:`.replies`); ``multipart/form-data`` bodies
(:mod:`.multipart`), the transcription API's requests and responses
(:mod:`.transcription_api`) and the transcripts it returns
(:mod:`.transcripts`).  Nothing here does I/O.
"""
