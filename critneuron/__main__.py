"""``python -m critneuron ...``: the `critneuron` command."""

import sys

from critneuron.cli import main

sys.exit(main())
