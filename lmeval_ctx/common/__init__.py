"""The ground layer: argument parsing, loggers, file locations, checkpoint loading, model-arg rules.

Nothing here imports from the rest of the package; every other layer may import from here.
See docs/layout.md for the layers.
"""
