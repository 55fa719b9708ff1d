"""In a checkout, `gsq_deploy.<folder>[.module]` is the checkout's top-level `<folder>[.module]`.

An import hook rather than a `__path__` entry: a `__path__` entry would load runtimes/onnx.py a
second time as a new module `gsq_deploy.runtimes.onnx` (two classes `OnnxRuntime`, two backend
tables), and mutmut, which names a module after its file's path, would not recognise it. The
standard library has no "alias this package" mechanism, hence this small finder.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import CodeType, ModuleType

PREFIX = "gsq_deploy."


class CheckoutAliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `gsq_deploy.<folder>...` and answers it with the module `<folder>...` of the checkout at
    `root`, importing that module (from `root`, whatever sys.path holds) if it is not loaded yet."""

    def __init__(self, root: Path, folders: tuple[str, ...]):
        self.root = root
        self.folders = folders

    def real_name(self, fullname: str) -> str | None:
        """`runtimes.onnx` for `gsq_deploy.runtimes.onnx`; None for names this finder does not alias."""
        if not fullname.startswith(PREFIX):
            return None
        name = fullname[len(PREFIX) :]
        return name if name.split(".")[0] in self.folders else None

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None):
        name = self.real_name(fullname)
        if name is None:
            return None
        try:
            module = self.real_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:  # no such module: find_spec's answer is None, as for any other name
                return None
            raise
        # origin: the file, as `python -m gsq_deploy.train.main` puts it into sys.argv[0]
        return importlib.machinery.ModuleSpec(
            fullname, self, origin=getattr(module, "__file__", None), is_package=hasattr(module, "__path__")
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The import system keeps the attributes (__name__, __spec__, __file__) a returned module has.
        return self.real_module(self.real_name(spec.name) or spec.name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the real module ran when it was imported."""

    def get_code(self, fullname: str) -> CodeType | None:  # `python -m gsq_deploy.runtimes.onnx`
        name = self.real_name(fullname) or fullname
        spec = importlib.util.find_spec(name)
        return spec.loader.get_code(name) if spec is not None and spec.loader is not None else None

    def real_module(self, name: str) -> ModuleType:
        """The checkout's module `name`, its top-level folder loaded from `root` first."""
        top = name.split(".")[0]
        loaded = sys.modules.get(top)
        folder = self.root / top
        if loaded is None:
            spec = importlib.util.spec_from_file_location(
                top, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )
            if spec is None or spec.loader is None:
                raise ImportError(f"gsq_deploy.{top}: no package {folder}", name=PREFIX + top)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[top] = loaded
            try:
                spec.loader.exec_module(loaded)
            except BaseException:
                del sys.modules[top]
                raise
        elif Path(getattr(loaded, "__file__", "") or "").resolve().parent != folder:
            raise ImportError(
                f"gsq_deploy.{top} is the checkout's {folder}, but this process already imported another "
                f"module named {top!r} ({getattr(loaded, '__file__', None)}); rename that one, or install "
                f"gsq-deploy as a wheel, where the name is gsq_deploy.{top} alone",
                name=PREFIX + top,
            )
        return importlib.import_module(name)


def install_aliases(root: Path, folders: tuple[str, ...]) -> None:
    """Put the checkout's finder first on sys.meta_path (gsq_deploy/__init__.py runs once a process)."""
    sys.meta_path.insert(0, CheckoutAliases(root, folders))
