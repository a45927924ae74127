"""Experiments over many runs: hyperparameter search (Optuna), the learning-rate range test,
the runs table, and the pictures (run overlays, the lr-find curve) drawn with matplotlib.

It may import inference, training, store, models, data, config and errors; never cli.
"""
