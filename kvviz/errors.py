"""Errors kvviz raises for bad input or an unusable model.

Each message is one sentence a person can act on; the CLI prints it as its one-line reason and the UI shows it
in an ``st.error``. Nothing here knows about either front end. ``first_line`` turns a library's exception into
the short reason such a sentence quotes.
"""


class KvvizError(Exception):
    """Base class: something the user can fix (input, settings, missing files)."""


class InputError(KvvizError):
    """The prompt or a setting is unusable (empty, too long, out of range)."""


class ModelLoadError(KvvizError):
    """The model could not be found or loaded."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters; its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
