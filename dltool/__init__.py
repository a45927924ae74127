"""dltool: train image classifiers from one YAML file.

`from dltool import register` gives the decorators that bring the user's own layers, datasets,
transforms, losses and models in (see docs/your-code.md); importing it imports no torch.
"""

import os as _os

__version__ = "0.1.0"

from dltool.config.usercode import ENVIRONMENT as _ENVIRONMENT  # noqa: E402  (after __version__: code files may read it)
from dltool.config.usercode import register  # noqa: E402

if _os.environ.get(_ENVIRONMENT):
    # a child process of a command that loaded --code files (DDP rank, tune worker, DataLoader worker)
    from dltool.config.usercode import load_from_environment as _load

    _load()

__all__ = ["register", "__version__"]
