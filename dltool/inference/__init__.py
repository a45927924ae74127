"""Using a trained checkpoint: evaluate it (metrics, confusion matrix, report files), predict
image files, and the preprocessing that turns an image file into the tensor the model was trained on.

It may import training, store, models, data, config and errors; never cli.
"""
