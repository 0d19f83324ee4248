"""Scoring a model's requests for lm-eval: log-probabilities a slice of positions at a time, prefixes
served from a longer sequence's forward pass, and response-cache keys that tell settings apart.
"""
