"""How lm-eval finds the plugin: one table of model names and the task folder, and the start-up hook.

lm-eval 0.4.13 has no plugin discovery. ``lmeval_ctx.pth`` imports this module
at interpreter start-up; it only installs an import hook, so start-up stays
cheap and torch, transformers and lm_eval are not imported. When lm_eval's
model registry (``lm_eval.models``) or task manager (``lm_eval.tasks.manager``)
is first imported, the hook registers the models of :data:`MODELS` lazily and
adds the plugin's task folder to every TaskManager's include path.

The table below is the one list of what lm-eval finds. The hook registers :data:`MODELS`; the
package's ``__path__`` (``lmeval_ctx/__init__.py``, which imports this module, so importing the
package installs the hook as the ``.pth`` file does) reads :data:`SHIPPED_FOLDERS`; and
``tests/test_plugin.py`` checks that ``pyproject.toml``'s entry points and wheel contents, the
``register_model`` names of the model classes and the folder :data:`TASK_PACKAGES` names agree with it.

Set ``LMEVAL_CTX_NO_AUTOLOAD=1`` to switch the hook off.
"""

from __future__ import annotations

import os
import sys

# -- the table --------------------------------------------------------------------------------
# lm-eval model name -> "module:class" (the form of lm-eval's lazy registry and of the
# ``lm_eval.models`` entry points).
MODELS = {
    "ctx-hf": "lmeval_ctx.model_wrappers.ctx_hf:CtxHFLM",
    "ctx-vllm": "lmeval_ctx.model_wrappers.ctx_vllm:CtxVLLM",
}
# ``lm_eval.tasks`` entry-point name -> the package whose folder holds the task YAMLs
# (:func:`lmeval_ctx.common.paths.tasks_path` finds that folder on disk).
TASK_PACKAGES = {"lmeval-ctx": "lmeval_ctx.tasks"}
# Top-level folders of the repository that are installed inside the package: the wheel copies them
# into ``lmeval_ctx/`` (``force-include``), a source checkout puts them on ``lmeval_ctx.__path__``.
SHIPPED_FOLDERS = ("model_wrappers", "tasks")


def register_models(models_module=None) -> None:
    """Register the plugin's models as lazy placeholders in lm-eval's registry."""
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


def add_task_folder(manager_module) -> None:
    """Make every ``TaskManager`` also index the plugin's task folder."""
    task_manager = manager_module.TaskManager
    if getattr(task_manager.__init__, "_lmeval_ctx", False):
        return
    import inspect  # here, not at start-up: this runs only once lm_eval's task manager is imported

    original_init = task_manager.__init__
    signature = inspect.signature(original_init)

    def __init__(self, *args, **kwargs):
        from lmeval_ctx.common.paths import tasks_path

        # include_path may come by keyword or by position (TaskManager(None, path)): bind as
        # lm-eval's own signature does, so a wrong call fails with lm-eval's own TypeError.
        bound = signature.bind(self, *args, **kwargs)
        include_path = bound.arguments.get("include_path")
        ours = str(tasks_path())
        paths = [] if include_path is None else (
            list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        )
        if ours not in {os.path.abspath(str(p)) for p in paths}:
            # ours first: paths given by the user come later and take precedence
            paths = [ours, *paths]
        bound.arguments["include_path"] = paths
        original_init(*bound.args, **bound.kwargs)

    __init__._lmeval_ctx = True
    __init__.__wrapped__ = original_init
    __init__.__doc__ = original_init.__doc__
    task_manager.__init__ = __init__


# -- RULER on GGUF models: synthetic data sized with the model's own tokenizer ----------------
def ruler_gguf_tokenizer(common_utils_module) -> None:
    """Let lm-eval's RULER tasks size their data with a GGUF model's own tokenizer."""
    from lmeval_ctx.taskdata.ruler_gguf import use_gguf_tokenizer

    use_gguf_tokenizer(common_utils_module)


_POST_IMPORT = {
    "lm_eval.models": register_models,
    "lm_eval.tasks.manager": add_task_folder,
    "lm_eval.tasks.ruler.common_utils": ruler_gguf_tokenizer,
}


class _HookedLoader:
    """Delegates to the real loader, then runs the post-import hook."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder:
    """A meta-path finder that wraps the loaders of a few lm_eval modules."""

    def __init__(self):
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        hook = _POST_IMPORT.get(fullname)
        if hook is None or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._resolving.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, hook)
        return spec


def install() -> None:
    """Install the hook once; run it now for modules that are already imported."""
    if os.environ.get("LMEVAL_CTX_NO_AUTOLOAD"):
        return
    if any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportFinder())
    for name, hook in _POST_IMPORT.items():
        if name in sys.modules:
            hook(sys.modules[name])


install()
