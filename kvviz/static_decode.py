"""Greedy decoding that stays on the device: the decode step the ``graphs`` bench path captures as a CUDA graph.

``StaticDecoder`` owns a transformers ``StaticCache`` and three device buffers, each allocated once and written in
place (a captured graph replays fixed addresses):

- ``input_id`` ``(1, 1)``: the token the next step feeds; the step writes its greedy choice back into it;
- ``tokens`` ``(max_len + 1,)``: the sequence, prompt first; each step advances ``cursor`` and writes its choice
  there;
- ``cursor`` ``()``: the index in ``tokens`` of the token chosen last.

One decode step is the model on ``input_id`` and an argmax on the device; the position it writes and attends from
comes from the cache's own device-side length (transformers' ``StaticLayer.cumulative_length``), so no step needs a
value from the host and any number of steps can run back to back: eagerly (any device, the CPU tests), compiled
with ``torch.compile`` (``compile``), or recorded as one CUDA graph (``capture``) that a replay runs without the
host launching anything. The host reads the chosen tokens when it wants them (``read``), once for many steps.

The step is the ``static`` bench path's, op for op (same cache length, same model call, same argmax), so eager
decoding here chooses the same tokens as that path; a compiled step fuses kernels and may round differently.

What it does not do: time anything or report (``bench.py``), sample (greedy only), or capture a model whose cache
layers keep their length on the host (sliding-window, indexed, linear-attention layers): a graph would freeze that
length at its capture value, so ``capture`` refuses and ``graph_blocker`` says why.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from kvviz.timing import synchronize

# Inductor settings for the compiled step. Emulating eager's intermediate roundings keeps a fused kernel's
# arithmetic closer to the eager step's, so the compiled path more often chooses the same tokens.
COMPILE_OPTIONS: dict[str, Any] = {"emulate_precision_casts": True}
# Eager steps run on a side stream before a capture: they initialise cuBLAS workspaces, the allocator's pools and,
# for a compiled step, compile it and load its kernels, none of which may happen while a graph is being recorded.
WARMUP_STEPS = 2


def graph_blocker(cache: Any) -> str | None:
    """Why the decode step over ``cache`` cannot be captured as a CUDA graph, or None when it can.

    Only a plain full-attention ``StaticLayer`` keeps its length in a device tensor that a replay reads; other
    static layers keep it (or their window offset) as a Python number, which a graph would freeze.
    """
    from transformers.cache_utils import StaticLayer

    others = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not StaticLayer})
    if others:
        return (f"captures only plain full-attention static cache layers; this model also has "
                f"{', '.join(others)}")
    return None


class StaticDecoder:
    """Prefill a prompt, then greedy decode steps that read from and write to fixed device buffers.

    Example (any device)::

        decoder = StaticDecoder(model, max_len=len(prompt) + 16)
        first = decoder.prefill(prompt)
        decoder.decode(15)                       # 15 steps, no host read in between
        new_tokens = decoder.read(len(prompt), 16)
    """

    def __init__(self, model: Any, max_len: int) -> None:
        from transformers import StaticCache

        self.model = model
        self.max_len = max_len
        device = model.device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.input_id = torch.zeros((1, 1), dtype=torch.long, device=device)  # (1, 1)
        # One slot past the cache: a capture's warm-up may choose a token whose own K/V never has to be stored.
        self.tokens = torch.zeros(max_len + 1, dtype=torch.long, device=device)  # (max_len + 1,)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)  # ()
        self._step: Callable[[], None] = self.step

    # ----- eager ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """An empty cache and sequence, in place: the buffers keep their addresses, so captured graphs stay valid."""
        self.cache.reset()
        self.tokens.zero_()
        self.cursor.zero_()

    def prefill(self, prompt: Sequence[int]) -> int:
        """Feed the prompt from an empty cache; store and return the chosen token (one host read)."""
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.input_id.device)  # (1, P)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.input_id.copy_(out.logits[:, -1].argmax(dim=-1, keepdim=True))  # (1, 1)
        self.tokens[: len(prompt)].copy_(ids[0])
        self.cursor.fill_(len(prompt))
        self.tokens[len(prompt)] = self.input_id[0, 0]
        return int(self.input_id)

    def step(self) -> None:
        """Feed ``input_id``; write the greedy choice into it and at ``tokens[cursor + 1]``: device ops only."""
        out = self.model(input_ids=self.input_id, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        chosen = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        self.input_id.copy_(chosen)
        self.cursor.add_(1)
        self.tokens.index_copy_(0, self.cursor.view(1), chosen.view(1))

    def decode(self, steps: int) -> None:
        """Run ``steps`` decode steps (compiled if ``compile`` was called) without reading anything back."""
        for _ in range(steps):
            self._step()

    def read(self, start: int, count: int) -> list[int]:
        """``count`` token ids of the sequence from index ``start`` (the prompt's are first): one host read."""
        return self.tokens[start : start + count].tolist()

    # ----- compiled and captured ------------------------------------------------------------------------------
    def compile(self, backend: str = "inductor", options: dict[str, Any] | None = None) -> None:
        """Make ``decode`` and ``capture`` use the step compiled by ``torch.compile``: one whole graph, fixed shapes.

        ``fullgraph=True`` makes a graph break an error instead of a silent split with host work between the
        pieces; inductor's own CUDA graphs stay off (default mode), so that a capture records exactly one graph,
        ours. Compilation happens at the first call, which ``capture`` makes in its warm-up. ``options`` are
        inductor settings (default ``COMPILE_OPTIONS``); another ``backend`` (the tests' ``aot_eager``) takes none.
        """
        settings = None
        if backend == "inductor":
            import torch._inductor.config as inductor_config

            # An older torch lacks some settings: compile without them rather than fail.
            settings = {k: v for k, v in (COMPILE_OPTIONS if options is None else options).items()
                        if hasattr(inductor_config, k)} or None
        self._step = torch.compile(self.step, backend=backend, fullgraph=True, dynamic=False, options=settings)

    def capture(self, steps: int, warmup_prompt: Sequence[int]) -> "torch.cuda.CUDAGraph":
        """Record ``steps`` decode steps as one CUDA graph; each ``replay()`` then runs them, the host idle.

        The warm-up feeds ``warmup_prompt`` and decodes ``WARMUP_STEPS`` tokens, so the cache needs room for
        ``len(warmup_prompt) + WARMUP_STEPS`` positions; one token is enough. It leaves the decoder mid-sequence:
        ``reset`` and ``prefill`` before replaying. Recording runs nothing on the device.
        """
        device = self.input_id.device
        if device.type != "cuda":
            raise RuntimeError(f"a CUDA graph needs a CUDA device; this decoder is on {device.type}")
        if len(warmup_prompt) + WARMUP_STEPS > self.max_len:
            raise ValueError(f"the warm-up needs {len(warmup_prompt) + WARMUP_STEPS} cache positions; "
                             f"the cache has {self.max_len}")
        blocker = graph_blocker(self.cache)
        if blocker:
            raise RuntimeError(blocker)
        self.reset()
        self.prefill(warmup_prompt)  # also allocates the cache's buffers (lazily, at their first update)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self.decode(WARMUP_STEPS)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other browser sessions may run the same model on other threads while this one captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.decode(steps)
        synchronize(device)
        return graph
