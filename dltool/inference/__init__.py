"""Using a trained checkpoint: evaluate it (metrics, confusion matrix, report files), predict
image files, the preprocessing that turns an image file into the tensor the model was trained on,
and export to ONNX and TorchScript files (classified through onnxruntime, PIL and numpy alone).

It may import training, store, models, data, config and errors; never cli.
"""
