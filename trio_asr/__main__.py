import sys

from trio_asr.cli import main

sys.exit(main())
