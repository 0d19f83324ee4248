"""RoPE methods on a model: what goes into ``config.rope_parameters`` and the rebuild of a
loaded model's rotary embeddings after its config changed.
"""
