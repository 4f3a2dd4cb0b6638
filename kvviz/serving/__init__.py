"""Serving: many requests on one model with transformers' continuous batching, a paged KV pool and prefix caching,
stepped one scheduler step at a time and recorded for the Serving page and ``python -m kvviz serve|prefix``.

Modules: ``cb_api`` (the only code touching transformers' private continuous-batching API), ``records`` (plain
data), ``accounting`` (paged vs contiguous bytes), ``engine`` (the stepped run and the sequential baseline),
``prefix`` (prefix-cache views), ``prompt_design`` (cache-friendly vs cache-hostile prompts, measured),
``pressure`` (a pool too small; maximum concurrency as vLLM computes it), ``metrics`` (a vLLM or SGLang server's
Prometheus metrics, and a kvviz run in the same shape), ``workload`` (demo requests), ``cli_commands`` (the two
subcommands). Importing this package imports neither torch nor transformers; nor do ``records`` and ``metrics``.
"""
