"""The data behind the tasks in ``tasks/``: task lengths, passkey prompts, long-range perplexity
windows, the task classes the YAMLs use, and RULER sized with a GGUF model's tokenizer.

The YAML helpers in ``tasks/*/utils.py`` are thin adapters over this layer.
"""
