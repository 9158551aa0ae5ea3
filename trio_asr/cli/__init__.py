"""The command line: ``trio-asr serve | client | transcribe | models``."""

from trio_asr.cli.commands import main

__all__ = ["main"]
