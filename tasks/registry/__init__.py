"""The MLflow registry side: evaluation of a new model against the champion, the promotion policy and the
steps that move the ``champion`` alias, the promotion ledger and rollback."""
