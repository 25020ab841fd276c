"""Landing files to the ``raw`` table: reading CSV and Parquet, coercion to the spec, the replay of a
bundled file as a daily feed. Landing files are only ever read."""
