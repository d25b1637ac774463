import sys

from thrum.cli import main

sys.exit(main())
