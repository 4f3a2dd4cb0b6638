"""Drills: interview questions about the KV cache, kept as data files in ``bank/``, and the mock interview.

- ``records.py``: the questions, links and grades as frozen dataclasses (plain data, no torch).
- ``bank.py``: reads and validates the bank (``bank/*.toml``).
- ``numeric.py``: fills numeric questions from public presets or the live model with seeded parameters; every answer
  is computed by kvviz's own formulas (``kv_formula``, ``roofline``, ``serving.prefix``, ``serving.pressure``).
- ``grading.py``: reads an answer with its unit and checks it within the question's tolerance.
- ``links.py``: the pages and views a question links to.
- ``mock.py``: the seeded question set, the 10-question mock interview, its score and review.

What it does not do: draw anything (``kvviz/ui/drills.py`` keeps each browser session's state, ``app_pages/drills.py``
lays it out).
"""
