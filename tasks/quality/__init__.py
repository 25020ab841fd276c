"""Data quality: the Great Expectations validation that splits ``raw`` into ``validated`` and
``quarantine`` (``validate``; reading GX results in ``results``), its Data Docs (``daydocs`` builds each
day's doc, ``datadocs`` writes and renders them), and feature drift against the champion's training data
(``drift``)."""
