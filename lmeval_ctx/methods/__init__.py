"""Context-extension methods as pure functions, importable without lm-eval or a model.

- :mod:`.catalog`: the method table (names, aliases, families, options) and its validation;
- :mod:`.rope`: what each method writes into a transformers ``rope_parameters`` dict;
- :mod:`.attention`: the relative position attention-level methods give each query-key pair;
- :mod:`.alibi`: ALiBi slopes.

Import from those modules: this one only names them.
"""
