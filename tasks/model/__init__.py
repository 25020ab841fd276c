"""The model stage.

- ``config``: :class:`ModelConfig` and each family's defaults (pydantic only);
- ``networks``: the ``nn.Module`` s (``TabularNet`` and its layers);
- ``tensors``: feature rows as tensors, whole-batch slicing (plain torch);
- ``module``: the Lightning module (``PriceModule``) and the in-memory DataModule;
- ``data``: the out-of-core loaders (the feature table streamed from Parquet);
- ``train``: ``train`` (with the refit on train + validation);
- ``progress``: one log line per training epoch (the task log);
- ``distributed``: the device plan (HOMEWORTH_TRAIN_*) and the DDP worker launcher;
- ``bundle``: the saved model (safetensors, config, preprocessing) and ``ModelBundle``, which scores;
- ``gbm``: the gradient-boosting yardstick;
- ``tune``: the tuning space and trials; ``retrain``: the retrain DAG's features and train steps;
- ``attempts``: a retried train's earlier tries (reuse a complete model version, or mark the orphans).

It imports ``tasks.core`` and ``tasks.features``, never ``tasks.registry`` or ``tasks.serving``.
"""
