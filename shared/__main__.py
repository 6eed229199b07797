"""``python -m shared …``: an alias of the operator CLI (`grants_cli`), kept for scripts; not deployed."""

import sys

from grants_cli.main import main

sys.exit(main())
