"""The model: configuration, networks, the Lightning module, data loading, training (with the refit on
train + validation), the gradient-boosting yardstick and the tuning space."""
