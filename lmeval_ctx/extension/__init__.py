"""Writing a method into a model: resolve a request against a config, write it into the config,
rebuild or install on the built model, and record what ran (ctx-hf and ctx-vllm share it).

Uses :mod:`lmeval_ctx.methods` for the maths and :mod:`lmeval_ctx.common`; knows nothing of tasks.
Of lm-eval it reads one rule only: the default window (:mod:`.window`).
"""
