"""Import the engine (kvviz, and with it PyTorch and transformers) once per server process, in one thread at a time.

Streamlit runs each browser session's script in its own thread. When two of them import transformers for the
first time at once, the one that waits for the other gets the wrong module object: CPython looks the module up in
``sys.modules`` before it waits for the other thread's import to finish, and returns that object afterwards; but
transformers replaces its own ``sys.modules`` entry with a lazy module at the end of its ``__init__.py``. The
waiting thread keeps the plain module, which has none of the lazy names, and the page fails with "cannot import
name 'DynamicCache' from 'transformers'". Here every script run waits on one lock, outside the import system,
until the first run has imported everything; from then on the lock is taken and released at once.

What it does not do: load a model (``kvviz.ui.resources``) or draw anything.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

import kvviz

_lock = threading.Lock()
_imported = False


def engine_modules() -> list[str]:
    """Every module of the kvviz package, Streamlit helpers included, except the command line's entry point."""
    return [module.name for module in pkgutil.walk_packages(kvviz.__path__, prefix="kvviz.")
            if module.name != "kvviz.__main__"]


def import_engine() -> None:
    """Import every kvviz module, unless that is done; a caller in another thread waits until it is done."""
    global _imported
    with _lock:
        if _imported:
            return
        for name in engine_modules():
            importlib.import_module(name)
        _imported = True
