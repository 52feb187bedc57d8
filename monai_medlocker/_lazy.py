"""PEP 562 lazy re-exports: a package ``__init__`` names what it exports without importing it.

The light commands (``medlocker --help``, ``keygen``, ``grant``, ``verify``, ``unlock``) need no
model, so importing a package must not pull in torch or MONAI through its re-exports; a name is
imported from its submodule the first time it is used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``__getattr__`` and ``__dir__`` for ``package`` re-exporting ``exports`` (submodule -> names).

    Args:
        package: the package's ``__name__``.
        exports: for each submodule (relative name, e.g. ``"image"``), the names it provides.

    Returns:
        the module-level ``__getattr__`` and ``__dir__`` functions to assign in the package.
    """
    where = {name: sub for sub, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list:
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
