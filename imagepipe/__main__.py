"""`python -m imagepipe`: the `imagepipe` command."""

import sys

from imagepipe.cli.main import main

sys.exit(main())
