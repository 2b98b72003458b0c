"""The training chain: the data stages, training, evaluation, the run's report, the LR range test."""
