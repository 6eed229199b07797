import sys

from grants_cli.main import main

sys.exit(main())
