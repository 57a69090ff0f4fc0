"""Helpers shared by the test modules (tiny models, batches, datasets, launching); no test module imports another."""
