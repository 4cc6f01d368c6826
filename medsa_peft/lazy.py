"""Lazy package attributes (PEP 562): a package names what it exports, and each name's module is imported the first
time the name is used.

The package `__init__`s export this way so that `medsa-peft --help` and `examples/train.py --help` import neither
torch nor peft: `from medsa_peft.data import SamFrame` still works and imports `medsa_peft.data.preprocess` then.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, list[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` of `package` whose names come from its submodules.

    exports: submodule (relative to the package, e.g. ".preprocess") -> the names it provides.
    Use as `__all__, __getattr__, __dir__ = lazy_exports(__name__, {".config": ["MedSAConfig"], ...})`.
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name], package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return sorted(module_of), __getattr__, __dir__
