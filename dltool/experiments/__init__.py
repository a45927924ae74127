"""Experiments over many runs: hyperparameter search (Optuna), the learning-rate range test,
the runs table, and the pictures (training curves, overlays, confusion matrix) drawn with matplotlib."""
