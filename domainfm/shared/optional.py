"""Lazy imports of optional heavy dependencies, failing with the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from domainfm.shared.errors import DomainfmError


class MissingDependencyError(DomainfmError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Imports ``module`` or raises an error that says how to install it.

    Args:
        module: The module to import, e.g. ``"openslide"``.
        extra: The domainfm extra that provides it, e.g. ``"export"``.
        package: The PyPI package name when it differs from the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{module!r} is needed here but could not be imported ({error}). Install it with "
            f"`pip install 'domainfm[{extra}]'` (or `pip install {package or module}`)."
        ) from error


def load_object(target: str) -> object:
    """Imports ``"package.module:attribute"`` and returns the attribute (used by the CLI tables)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
