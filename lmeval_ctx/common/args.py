"""Values from ``--model_args`` and ``--metadata``: one parser per kind of value.

lm-eval passes model args as strings (``replace_rope_scaling=no`` arrives as
``"no"``, and ``bool("no")`` is True) and metadata as parsed JSON. Every
boolean setting of the plugin goes through :func:`parse_bool`, and every
dictionary of settings through :func:`reject_misspelt_keys`, so a flag means
what it says and a typo is an error rather than a silent default.
"""

from __future__ import annotations

import difflib
from typing import Iterable

TRUE_SPELLINGS = ("true", "yes", "1")
FALSE_SPELLINGS = ("false", "no", "0")


def parse_bool(value, name: str) -> bool:
    """``value`` as a bool: a bool, 0/1, or one of true/false/yes/no/1/0 (any case).

    Anything else is a ValueError naming the argument, since guessing would let a
    misspelt flag run the opposite of what was asked.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        spelled = value.strip().lower()
        if spelled in TRUE_SPELLINGS:
            return True
        if spelled in FALSE_SPELLINGS:
            return False
    raise ValueError(
        f"{name}={value!r} is not a boolean. Use {name}=true or {name}=false "
        f"(also accepted: {'/'.join(TRUE_SPELLINGS[1:])} and {'/'.join(FALSE_SPELLINGS[1:])})."
    )


def parse_optional_bool(value, name: str) -> bool | None:
    """Like :func:`parse_bool`, with None (not given) passed through."""
    return None if value is None else parse_bool(value, name)


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` is most likely a misspelling of, or None when none is close."""
    matches = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


def reject_misspelt_keys(given: Iterable[str], known: Iterable[str], *, where: str,
                         accepted: Iterable[str] = ()) -> None:
    """Raise ValueError naming every key in ``given`` that is not known but close to a known key.

    ``known``: the plugin's own keys for this place; ``accepted``: other keys that
    are legitimately there (lm-eval's or transformers' own), never reported. Keys
    close to nothing of ours are left to whoever else reads them. All misspellings
    are named in one message, each with the key it most likely means, so one run
    shows every fix.
    """
    known = list(known)
    allowed = set(known) | set(accepted)
    misspelt = {key: closest_key(key, known) for key in given if key not in allowed}
    misspelt = {key: intended for key, intended in misspelt.items() if intended is not None}
    if not misspelt:
        return
    guesses = "; ".join(f"{key!r}: did you mean {intended!r}?" for key, intended in misspelt.items())
    plural = "s" if len(misspelt) > 1 else ""
    raise ValueError(f"Unknown {where} key{plural} {guesses} Fix the spelling{plural} "
                     f"(known keys: {', '.join(sorted(known))}).")


def check_dtype(value, name: str = "dtype"):
    """``value`` unchanged if it names a floating-point torch dtype (``float32``, ``bfloat16``,
    ``float16``, ``half``, ...), is one, or is ``auto``; else a ValueError with the usual choices.
    lm-eval resolves the name with ``getattr(torch, name)``, which fails on a typo with an
    AttributeError about the torch module."""
    import torch

    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    resolved = getattr(torch, value.strip(), None) if isinstance(value, str) else None
    if isinstance(resolved, torch.dtype) and resolved.is_floating_point:
        return value
    raise ValueError(f"{name}={value!r} is not a floating-point torch dtype: use {name}=auto (the checkpoint's own), "
                     "float32, bfloat16 or float16.")
