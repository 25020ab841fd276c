"""Per-dataset feature modules: each defines ``derive(lf)`` and the model's feature lists.

A module exposes:
- ``derive(lf: LazyFrame) -> LazyFrame``: derived columns from one validated row (no look-ahead);
- ``NUMERIC``: columns fed to the network as numbers (clipped and standardized);
- ``CATEGORICAL``: columns fed through embeddings (a vocabulary fitted on the training split);
- ``TARGET_TRANSFORM``: ``"log"`` or ``"identity"``.
A spec without a feature module uses its numeric and categorical roles as they are.
"""
