"""Data: datasets, splits, transforms and loaders, built from the `data:` section of a config."""

from dltool.data.build import build_data
from dltool.data.bundle import DataBundle
from dltool.data.loaders import Loader, make_loader

__all__ = ["DataBundle", "Loader", "build_data", "make_loader"]
