"""Med-SA (Medical SAM Adapter) as a PEFT method for transformers' SamModel.

`import medsa_peft` registers the "MEDSA" PEFT type; do it before loading any Med-SA adapter.

The package's names are imported when first used (`medsa_peft.lazy`), so that the command lines answer `--help`
without importing torch or peft. Registration needs peft, so it waits for it: it runs at once when peft is already
imported, else as soon as peft has been imported, once no module of this package is part-way through its own import
(a module that imports peft must finish before the tuner, which may import that module, can load). Importing
`medsa_peft.tuner` (`MedSAConfig`, `MedSAModel`...) registers too.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from .lazy import lazy_exports

__version__ = "0.1.0"
__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".tuner": [
            "MedSAConfig",
            "MedSAModel",
            "compile_sam_layers",
            "enable_activation_checkpointing",
            "register_medsa",
            "use_fused_attention",
        ]
    },
)


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds peft and this package's modules as the other finders do, with loaders that report when each import
    ends; after the last one, with peft imported, it imports `medsa_peft.tuner` (which registers) and leaves
    `sys.meta_path`."""

    def __init__(self) -> None:
        self._finding = False
        self._loading = 0  # imports of peft or of this package's modules under way

    def find_spec(self, name, path=None, target=None):
        if self._finding or not (name == "peft" or name.startswith(f"{__name__}.")):
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _ReportingLoader(spec.loader, self)
        return spec

    def run(self, loader: importlib.abc.Loader, module) -> None:
        self._loading += 1
        try:
            loader.exec_module(module)
        finally:
            self._loading -= 1
        if not self._loading and "peft" in sys.modules and self in sys.meta_path:
            sys.meta_path.remove(self)
            importlib.import_module(".tuner", __name__)


class _ReportingLoader:
    """A module's own loader, run through `_RegisterAfterPeft.run`."""

    def __init__(self, loader: importlib.abc.Loader, finder: _RegisterAfterPeft) -> None:
        self._loader, self._finder = loader, finder

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the module keeps its own loader
        self._finder.run(self._loader, module)


if "peft" in sys.modules:
    importlib.import_module(".tuner", __name__)
else:
    sys.meta_path.insert(0, _RegisterAfterPeft())
