"""Context-extension methods as pure functions, importable without lm-eval or a model.

- :mod:`.catalog`: the method table (names, aliases, families, options) and its validation;
- :mod:`.rope`: what each method writes into a transformers ``rope_parameters`` dict;
- :mod:`.attention`: the relative position attention-level methods give each query-key pair;
- :mod:`.alibi`: ALiBi slopes.

This module only re-exports the catalog's names.
"""

from lmeval_ctx.methods.catalog import (  # noqa: F401
    ALIBI_ATTENTION_METHODS,
    ALL_METHOD_SPELLINGS,
    ATTENTION_METHOD_OPTIONS,
    ATTENTION_METHODS,
    LENGTH_DEPENDENT_METHODS,
    METHOD_ALIASES,
    METHOD_NAMES,
    METHOD_OPTION_NAMES,
    METHOD_OWN_OPTIONS,
    METHODS,
    MODIFIER_OPTIONS,
    ROPE_METHOD_OPTIONS,
    ROPE_ONLY_METHODS,
    canonical_method,
    factor_text,
    takes_factor,
    validate_factor,
)
