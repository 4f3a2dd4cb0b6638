"""Shared fixtures: models are loaded once per test session (the tiny ones are instant; SmolLM2 is ~2 s cached);
the browser check of the browser tests and the llama.cpp check of the llamacpp path's tests."""

from __future__ import annotations

import os

import pytest

from kvviz.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return load_model("tiny-llama", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny-gpt2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def untied_llama() -> LoadedModel:
    """A tiny Llama whose output head is not its embedding, so greedy text varies (tied random models echo)."""
    from transformers import LlamaConfig

    from kvviz.models import load_random_model

    config = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False)
    return load_random_model(config, "tiny-llama-untied")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model, from its GGUF package (converted once into the kvviz cache folder)."""
    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture
def require_browser() -> None:
    """Skip the test without Chromium or Playwright, with the reason; with ``KVVIZ_REQUIRE_BROWSER=1`` (``make test``
    sets it) fail it instead."""
    from app_driver import CHROMIUM

    reason = None
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (run `make browser`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Python Playwright is not installed (pip install -r requirements-dev.txt)"
    if reason is None:
        return
    if os.environ.get("KVVIZ_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KVVIZ_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def require_llamacpp() -> None:
    """Skip the test without llama-cpp-python, with the reason; with ``KVVIZ_REQUIRE_LLAMACPP=1`` (``make test``
    sets it, and installs the package from requirements-dev.txt) fail it instead."""
    from kvviz.llamacpp_engine import INSTALL_HINT, installed

    if installed():
        return
    reason = f"llama-cpp-python is not installed: {INSTALL_HINT}"
    if os.environ.get("KVVIZ_REQUIRE_LLAMACPP") == "1":
        pytest.fail(f"KVVIZ_REQUIRE_LLAMACPP=1 but {reason}")
    pytest.skip(reason)
