"""trio-asr: streaming speech recognition over WebSockets."""

from trio_asr._version import __version__

__all__ = ["__version__"]
