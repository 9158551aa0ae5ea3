"""Serving: sockets, tasks, files and operations around the protocol core.

The listeners and admission (:mod:`.server`), one connection's tasks
(:mod:`.session`), one open stream (:mod:`.open_stream`), plain HTTP
(:mod:`.http_router`), the settings (:mod:`.config`), and the operational
parts: tokens, TLS, metrics, logs, recordings, the drain.
"""
