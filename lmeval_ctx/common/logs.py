"""The plugin's loggers: children of lm-eval's, so its lines show where and when lm-eval's do.

``lm_eval.utils.setup_logging`` (run by the ``lm_eval`` command and by
``simple_evaluate``) gives the ``lm_eval`` logger its level (``--verbosity``,
``LMEVAL_LOG_LEVEL``; INFO by default) and its one stderr handler, and stops it
propagating to the root logger. A logger named after a plugin module alone
(``logging.getLogger(__name__)``) hangs under the root logger instead, whose default
level is WARNING: the plugin's INFO lines (the effective settings) never reached the
console. Under ``lm_eval.`` they take lm-eval's level, handler and format.
"""

from __future__ import annotations

import logging

LM_EVAL_LOGGER = "lm_eval"


def plugin_logger(module_name: str) -> logging.Logger:
    """The logger for the plugin module ``module_name``: ``lm_eval.<module_name>``."""
    return logging.getLogger(f"{LM_EVAL_LOGGER}.{module_name}")
