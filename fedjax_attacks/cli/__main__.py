"""``python -m fedjax_attacks.cli``: the ``fedjax-attacks`` command line."""

import sys

from fedjax_attacks.cli.main import main

sys.exit(main())
