"""The checkpoint format and the writing of files: atomic save, safe load, rebuilding a model from
the config a checkpoint carries. Training writes it and inference reads it, so it sits below both.

It may import models, data, config and errors; never training, inference or cli.
"""
