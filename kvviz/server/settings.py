"""Server mode: the settings a class server runs with, read from the environment and a TOML file, and the limits
they set.

``KVVIZ_SERVER_MODE=1`` turns server mode on; its settings come from ``KVVIZ_SERVER_CONFIG`` (default
``kvviz-server.toml`` in the working folder; without the file every setting keeps its default). The file's keys
are ``ServerSettings``' fields; ``deploy/kvviz-server.toml`` is a documented example. Without server mode nothing
is limited, but ``preload`` and ``torch_threads`` still apply to a server started with ``python -m kvviz.ui.serve``.

What it does not do: enforce anything itself (``kvviz.ui`` calls the checks below where a session acts), or know
about Streamlit. Every check raises a ``KvvizError`` whose message says which limit was hit and what to do.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from kvviz.errors import InputError, ModelLoadError
from kvviz.models import DEFAULT_MODEL, TINY_MODELS

MODE_ENV = "KVVIZ_SERVER_MODE"
CONFIG_ENV = "KVVIZ_SERVER_CONFIG"
DEFAULT_CONFIG = "kvviz-server.toml"
BENCHMARK_MODES = ("off", "one")  # no benchmarks, or one at a time per server


@dataclass(frozen=True)
class ServerSettings:
    """What a server allows. The defaults are those of server mode; ``enabled`` False lifts every limit."""

    enabled: bool = False
    models: tuple[str, ...] = (DEFAULT_MODEL, *TINY_MODELS)  # the only models a session may load
    preload: tuple[str, ...] = (DEFAULT_MODEL,)  # loaded when the server starts (python -m kvviz.ui.serve)
    max_new_tokens: int = 256  # per trace: the prefill's token and the steps after it
    max_context: int = 1024  # tokens in a session's context (prompt + generated)
    benchmarks: str = "one"  # "off", or "one": one at a time per server, others told to wait
    idle_minutes: float = 20.0  # a session idle this long has its trace freed
    upload_max_bytes: int = 1_048_576  # any uploaded or pasted file (configs, results, traces, metrics)
    torch_threads: int = 0  # torch's intra-op threads for the process; 0 keeps torch's default (the core count)

    def __post_init__(self) -> None:
        if self.benchmarks not in BENCHMARK_MODES:
            raise InputError(f"benchmarks must be one of {', '.join(BENCHMARK_MODES)} (got {self.benchmarks!r}).")
        for name in ("max_new_tokens", "max_context", "upload_max_bytes"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.idle_minutes <= 0 or self.torch_threads < 0:
            raise InputError("idle_minutes must be positive and torch_threads 0 or more.")
        if not self.models:
            raise InputError("models must name at least one model.")

    # ----- checks -------------------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        """Raise ``ModelLoadError`` when server mode forbids loading ``name`` (any path or hub id, and any built-in
        model not on the allow-list)."""
        if not self.enabled or name in self.models:
            return
        raise ModelLoadError(
            f"This server runs in class mode and loads only {', '.join(self.models)}; '{name}' is not one of them "
            "(local folders and Hugging Face ids are turned off here). Choose one of those in the list."
        )

    def new_tokens_cap(self, requested: int) -> tuple[int, str | None]:
        """The new tokens a trace may have, and the sentence to show when the request was cut."""
        if not self.enabled or requested <= self.max_new_tokens:
            return requested, None
        return self.max_new_tokens, (f"This server allows at most {self.max_new_tokens} new tokens per trace: "
                                     f"asked for {requested}, this trace stops at {self.max_new_tokens}.")

    def check_context(self, tokens: int) -> None:
        """Raise ``InputError`` when a context of ``tokens`` would pass the server's cap."""
        if self.enabled and tokens > self.max_context:
            raise InputError(f"This server caps a session's context at {self.max_context:,} tokens (this step would "
                             f"make {tokens:,}): Reset, or use a shorter prompt.")

    def check_benchmark(self) -> None:
        if self.enabled and self.benchmarks == "off":
            raise InputError("Benchmarks are turned off on this class server: the Speed page can still show saved "
                             "results (the shipped ones, or a file you upload).")

    def check_upload(self, size: int) -> None:
        if self.enabled and size > self.upload_max_bytes:
            raise InputError(f"That file has {size:,} bytes; this server accepts files of up to "
                             f"{self.upload_max_bytes:,} bytes.")

    @property
    def idle_seconds(self) -> float:
        return self.idle_minutes * 60


def _from_table(table: Mapping[str, Any], enabled: bool, source: str) -> ServerSettings:
    known = {item.name for item in fields(ServerSettings)} - {"enabled"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    values: dict[str, Any] = {}
    for name, value in table.items():
        default = getattr(ServerSettings, name)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise InputError(f"{source}: {name} must be a list of model names (got {value!r}).")
            value = tuple(value)
        else:
            allowed = (int, float) if isinstance(default, float) else type(default)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise InputError(f"{source}: {name} must be a {type(default).__name__} (got {value!r}).")
        values[name] = value
    return ServerSettings(enabled=enabled, **values)


def load_settings(environ: Mapping[str, str] | None = None) -> ServerSettings:
    """The settings of this process: server mode from ``KVVIZ_SERVER_MODE``, values from the config file.

    A missing default file leaves the defaults; a missing file named in ``KVVIZ_SERVER_CONFIG``, bad TOML or a
    bad value raises ``InputError`` (a server should not start with settings other than those it was given)."""
    environ = os.environ if environ is None else environ
    enabled = environ.get(MODE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    named = environ.get(CONFIG_ENV)
    path = Path(named or DEFAULT_CONFIG)
    if not path.is_file():
        if named:
            raise InputError(f"{CONFIG_ENV} names {path}, which is not a file.")
        return ServerSettings(enabled=enabled)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"{path}: cannot read it as TOML ({error}).") from None
    return _from_table(table, enabled, str(path))
