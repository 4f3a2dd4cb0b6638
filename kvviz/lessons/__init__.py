"""Lessons: short guided paths through the KV cache, each step an action on the live model and a check of its state.

- ``core.py``: ``Lesson``, ``LessonStep``, ``LessonState``, ``Snapshot``, ``Check`` and the shared actions/checks.
- ``prefill_and_decode.py``, ``costs_and_bytes.py``, ``matrix.py``, ``paged.py``, ``policies.py``,
  ``windows.py``: the lessons, two or one per file.
- ``catalogue.py``: their order, and which can be shown (a lesson's page must exist).

What it does not do: draw or import Streamlit (``kvviz/ui/lessons.py`` lays lessons out).
"""
