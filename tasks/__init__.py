"""homeworth: the logic of the house-price pipeline, importable and testable without Airflow.

The subpackages follow the data (landing -> quality -> features -> model -> registry -> serving). In the
code, each imports only those above it in this list (quality's drift check reads the feature definitions):

- ``core``: settings, the dataset spec, storage, every lake path, MLflow plumbing, Params, XCom handoffs;
- ``ingest``: landing files to the ``raw`` table (and the replay of a bundled file as a daily feed);
- ``features``: the feature table, comparable sales, the preprocessing artifact;
- ``quality``: validation with Great Expectations, Data Docs, feature drift;
- ``model``: networks, the Lightning module, data loading, training, the boosting yardstick, tuning;
- ``registry``: evaluation, the promotion policy and steps, the ledger, rollback;
- ``serving``: the predict endpoint, batch scoring, HTML pages.

``datasets`` holds the bundled datasets (King County), one folder each; ``cli`` is the ``homeworth`` command.
"""
