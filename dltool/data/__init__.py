"""Data: datasets, splits, transforms and loaders, built from the `data:` section of a config.

The names below load their modules on first use: those import torchvision, which
`dltool.data.decode` (how `dltool predict` reads an image) does not need.
It may import config and errors only; never models or anything above them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DataBundle", "Loader", "build_data", "make_loader"]

_HOMES = {"build_data": "dltool.data.build", "DataBundle": "dltool.data.bundle",
          "Loader": "dltool.data.loaders", "make_loader": "dltool.data.loaders"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'dltool.data' has no attribute {name!r}")
