"""The coefficients published with the DyWeight paper, converted to ``dyweight/1`` files.

The release ships Python pickles (EDM-persistence ``network-snapshot-*.pkl``) and ``torch.save``
archives; :mod:`.safe_unpickle` reads them without running any code from them and :mod:`.convert`
turns the recorded tables into :class:`~comfyui_dyweight.coefficients.Coefficients`.
"""

from .convert import ReleaseImportError, import_release_file, import_release_files
from .safe_unpickle import UnsafePickleError

__all__ = ["ReleaseImportError", "UnsafePickleError", "import_release_file", "import_release_files"]
