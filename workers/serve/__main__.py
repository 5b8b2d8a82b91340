"""``python -m shardwright.workers.serve --config FILE``: one serving replica."""

import sys

from .server import main

sys.exit(main())
