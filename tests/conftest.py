"""Shared fixtures: models are loaded once per test session (the tiny ones are instant; SmolLM2 is ~2 s cached)."""

from __future__ import annotations

import pytest

from kvviz.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return load_model("tiny-llama", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny-gpt2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real default model, from its GGUF package (converted once into the kvviz cache folder)."""
    return load_model("smollm2-135m", device="cpu", dtype="float32")
