"""Data quality: the Great Expectations validation that splits ``raw`` into ``validated`` and
``quarantine``, its Data Docs, and feature drift against the champion's training data."""
