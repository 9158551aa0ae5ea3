"""Serving: sockets, tasks, files and operations around the protocol core.

The listeners and admission (:mod:`.server`), one connection's tasks
(:mod:`.session`), one open stream (:mod:`.open_stream`), HTTP/1.1
(:mod:`.http`) and the routes (:mod:`.routes`), the settings
(:mod:`.config`), and the operational parts: tokens, TLS, metrics, logs,
recordings, the drain.
"""
