"""lmeval-ctx: context-extension methods and long-context tasks for lm-evaluation-harness.

Importing this package is cheap (it runs at interpreter start-up through
``lmeval_ctx.pth``): it imports neither torch, transformers nor lm_eval. The code's
layout, layer by layer: docs/layout.md.
"""

import os as _os

from lmeval_ctx.plugin import SHIPPED_FOLDERS as _SHIPPED_FOLDERS

__version__ = "0.1.0"

# An installed wheel carries the wrappers and tasks inside this package. In a
# source checkout (tests, ``pip install -e .``) they sit at the repository's top
# level; make them importable under the same names, lmeval_ctx.model_wrappers.
_here = _os.path.dirname(__file__)
_checkout = _os.path.dirname(_here)
if not any(_os.path.isdir(_os.path.join(_here, folder)) for folder in _SHIPPED_FOLDERS) and all(
    _os.path.isdir(_os.path.join(_checkout, folder)) for folder in _SHIPPED_FOLDERS
):
    __path__.append(_checkout)  # noqa: F821 - __path__ is defined for packages
