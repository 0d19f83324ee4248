"""Attention-level methods (ReRoPE, SelfExtend, LM-Infinite, dual chunk) and log-n scaling on a
built RoPE model: the patch into transformers' attention-function registry and the kernel it runs.
"""
