"""Editable installs: link the source tree instead of copying wrappers and tasks.

A regular wheel copies ``model_wrappers/`` and ``tasks/`` into ``lmeval_ctx/``
(``force-include`` in pyproject.toml). An editable install must not: the source
package finds them beside itself (see ``lmeval_ctx/__init__.py``), so only the
start-up hook ``lmeval_ctx.pth`` is added.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableHook(BuildHookInterface):
    """Adds the start-up hook, and only it, to an editable install."""

    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"] = {"lmeval_ctx.pth": "lmeval_ctx.pth"}
