"""Benchmarks: ``python -m benchmarks.run`` (the pipeline at 1M-50M rows, ``make bench``) and
``python -m benchmarks.serving`` (the predict endpoint). They write docs/benchmarks.md and docs/serving.md."""
