"""``python -m lmeval_ctx``: the ``lmeval-ctx`` command (:mod:`lmeval_ctx.cli`)."""

import sys

from lmeval_ctx.cli import main

sys.exit(main())
