"""`python -m genq ...`: the same as the `genq` command."""

import sys

from genq.main import main

sys.exit(main())
