"""Alias ``pydicom._storage_sopclass_uids`` to ``pydicom.uid`` for monailabel 0.8.5 under pydicom 3.

monailabel imports pydicom-seg, which does ``from pydicom._storage_sopclass_uids import ...``;
pydicom 3 removed that module (its UIDs live in ``pydicom.uid``). ``scripts/setup_label_env.sh``
copies this file into the site-packages of ``.venv-label`` with a ``.pth`` line that imports it,
so the alias is in place before monailabel is imported, in ``monailabel start_server`` too.
The alias is lazy: pydicom is only imported when something asks for the old module name.
"""

import importlib
import importlib.abc
import importlib.util
import sys

OLD_NAME = "pydicom._storage_sopclass_uids"


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return importlib.import_module("pydicom.uid")

    def exec_module(self, module):
        pass  # pydicom.uid is already executed; the old name just points at it


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != OLD_NAME:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader())


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.append(_AliasFinder())  # last: a pydicom that still has the module wins
