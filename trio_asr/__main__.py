import sys

from trio_asr.cli.commands import main

sys.exit(main())
