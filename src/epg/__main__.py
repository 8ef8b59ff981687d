import sys

from epg.cli import main

sys.exit(main())
