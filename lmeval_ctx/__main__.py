import sys

from lmeval_ctx.cli import main

sys.exit(main())
