import sys

from metablocks.cli import main

sys.exit(main())
