"""lm-eval model classes of lmeval-ctx (installed as ``lmeval_ctx.model_wrappers``)."""
