"""Inference outside training: exporting a checkpoint to ONNX and TorchScript files, and classifying
images with those files (the ONNX path through onnxruntime, PIL and numpy, never importing torch)."""
