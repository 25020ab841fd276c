"""The feature table of a training window: row-level features from the dataset module, comparable sales
from the validated history, the split, and the fitted preprocessing artifact that training and serving share."""
