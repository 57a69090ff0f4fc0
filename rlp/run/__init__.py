"""The run layer: recipes, data, models, checkpoints, metrics, the Composer algorithm and the training entry."""
