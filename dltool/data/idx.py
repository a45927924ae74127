"""IDX files (the MNIST format) read straight from the .gz files a download leaves, unextracted.

torchvision's MNIST, FashionMNIST and KMNIST read only extracted files; with these classes the
raw folder may hold either form, and nothing is written next to the data.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch
import torchvision.datasets as tvd

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx(folder: str, name: str) -> str | None:
    """The path of IDX file `name` in `folder`, extracted or gzipped, or None."""
    for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared type and shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    code, ndim = data[2], data[3]
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=IDX_DTYPES[code], offset=4 + 4 * ndim).reshape(dims)


class GzipIdx:
    """Mixin for an MNIST-style dataset: the raw folder may hold the IDX files gzipped."""

    def _idx_names(self) -> tuple[str, str]:
        prefix = "train" if self.train else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def _check_exists(self) -> bool:
        return all(find_idx(self.raw_folder, n) for n in self._idx_names())

    def _load_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = (read_idx(find_idx(self.raw_folder, n)) for n in self._idx_names())
        return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# Same class names as torchvision's, so their raw folders (root/<name>/raw) are the same.
class MNIST(GzipIdx, tvd.MNIST):
    __doc__ = tvd.MNIST.__doc__


class FashionMNIST(GzipIdx, tvd.FashionMNIST):
    __doc__ = tvd.FashionMNIST.__doc__


class KMNIST(GzipIdx, tvd.KMNIST):
    __doc__ = tvd.KMNIST.__doc__


GZIP_AWARE = {cls.__name__: cls for cls in (MNIST, FashionMNIST, KMNIST)}
