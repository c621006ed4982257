"""The comparison harness: tasks, models, optimizers, training, tables."""
