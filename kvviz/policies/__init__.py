"""Cache policies: what eviction keeps, what it saves, and what it costs in quality against the full cache.

- ``records.py``: plain records (no torch) of what a policy holds and how it scored.
- ``eviction.py``: ``PolicyCache``, a ``DynamicCache`` that evicts down to a token budget after every model call,
  with the policies full, window, sinks (StreamingLLM), h2o, snapkv, knorm and random.
- ``quantised.py``: ``QuantisedPolicyCache``, fp8 / int4 / int2 caches that hold every token in fewer bits.
- ``quality.py``: the teacher-forced loop that runs every policy over one text beside the full cache.
- ``cli_commands.py``: ``python -m kvviz policies``.

What it does not do: draw (that is a page's chart module).
"""
