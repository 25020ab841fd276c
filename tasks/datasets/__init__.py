"""The bundled datasets, one folder each: spec (``spec.yaml``), data and its source note, feature module,
synthetic generator. Another market needs only a spec (anywhere, named by ``HOMEWORTH_DATASET_SPEC``).

A feature module (``features_module`` in the spec) exposes:
- ``derive(lf: LazyFrame) -> LazyFrame``: derived columns from one validated row (no look-ahead);
- ``NUMERIC``: columns fed to the network as numbers (clipped and standardized);
- ``CATEGORICAL``: columns fed through embeddings (a vocabulary fitted on the training split);
- ``TARGET_TRANSFORM``: ``"log"`` or ``"identity"``.
A spec without a feature module uses its numeric and categorical roles as they are.
"""
