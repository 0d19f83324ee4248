"""``lmeval-ctx report``: leaderboards, plots and a page from lm-eval output folders.

Layers, lowest first (imports point down only): ``statistics`` (Wilson intervals, RULER's
averages) < ``results`` (the data model: suites, measures, rows, the table) < ``samples``
(logged samples) < ``read`` (output folders into rows) < ``leaderboard`` (the columns and
the ``none`` baseline) < ``plots``, ``page`` < ``write`` (the entry point). See docs/report.md.
"""
