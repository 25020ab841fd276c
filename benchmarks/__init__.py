"""Benchmarks: ``python -m benchmarks.run`` (the pipeline at 1M-50M rows; ``make bench`` runs ``--quick``) and
``python -m benchmarks.serving`` (the predict endpoint). ``benchmarks.run`` writes a scratch report unless given
``--write-docs`` (docs/benchmarks.md); serving writes docs/serving.md."""
