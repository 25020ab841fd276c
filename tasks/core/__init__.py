"""What every stage shares: settings, the dataset spec, storage and lake paths, MLflow plumbing, Params,
the typed handoffs between tasks. Nothing here imports another ``tasks`` subpackage."""
