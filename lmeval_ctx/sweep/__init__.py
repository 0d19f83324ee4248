"""``lmeval-ctx sweep``: a grid of methods over lm-eval tasks with one model load.

Layers, lowest first (imports point down only): ``points`` (``--methods``/``--factor`` into
points, their folder names, their checks) < ``request`` (what a sweep asks for and what
identifies it: the manifest's compared settings, versions, checkpoint fingerprints) <
``outputs`` (manifests, resume, conflicts, output folders) < ``run`` (load once, apply each
point, run lm-eval). See docs/sweep.md.
"""
