"""Server: what this server process holds and how fast it answers, for whoever runs a class on it.

Layout only: the settings in force, the process's memory, the loaded models, every live session's memory (no
prompt or token text: an anonymous id, the model, the context length, bytes held, idle time), the model calls
waiting now, and the server-side latency of each kind of call (submission to result, through the model's queue).
The numbers come from ``kvviz.server`` through ``kvviz.ui.server``.
"""

from __future__ import annotations

import time

import streamlit as st

from kvviz.kv_formula import format_bytes
from kvviz.server.queue import summarise
from kvviz.server.sessions import process_rss_bytes
from kvviz.ui.server import loaded_model_names, server_settings, session_registry, worker_pool

st.title("Server")
settings = server_settings()
if settings.enabled:
    st.caption(f"Server mode: models {', '.join(settings.models)}; at most {settings.max_new_tokens} new tokens per "
               f"trace and {settings.max_context:,} tokens of context; benchmarks: "
               f"{'off' if settings.benchmarks == 'off' else 'one at a time'}; an idle session's trace is freed "
               f"after {settings.idle_minutes:g} minutes; uploads up to {settings.upload_max_bytes:,} bytes.")
else:
    st.caption("Open mode: no limits (start with KVVIZ_SERVER_MODE=1 for a class; see docs/classroom.md).")
st.button("Refresh", key="admin_refresh")

rss = process_rss_bytes()
usage = session_registry().usage()
with st.container(horizontal=True):
    st.metric("Server memory (resident)", format_bytes(rss) if rss is not None else "unknown", border=True)
    st.metric("Sessions", f"{len(usage)}", border=True)
    st.metric("Held by sessions' traces", format_bytes(sum(row.bytes_held for row in usage)), border=True,
              help="Live cache tensors plus the recorded attention and K/V rows of every session's trace.")

st.subheader("Loaded models")
st.markdown("\n".join(f"- {name}" for name in loaded_model_names()) or "None yet.")

st.subheader("Sessions")
if usage:
    st.dataframe([{"session": row.session, "model": row.model or "—", "tokens": str(row.tokens),
                   "held": format_bytes(row.bytes_held), "idle (s)": f"{row.idle_seconds:,.0f}"} for row in usage],
                 hide_index=True)
else:
    st.caption("No session yet.")

st.subheader("Model calls")
pool = worker_pool()
waiting = {name: sum(queue.values()) for name, queue in pool.waiting().items()}
st.caption("Each model's calls run one at a time, taking one call from each waiting session in turn. Latency is "
           "measured on the server from a call's submission to its record (queue wait plus the model's run), not "
           "counting the page's drawing or the network. Calls waiting now: "
           + (", ".join(f"{name} {count}" for name, count in waiting.items()) or "none") + ".")
timings = pool.timings()
if timings:
    since = time.time() - timings[0].submitted
    st.dataframe([{"call": row.kind, "calls": str(row.calls), "errors": str(row.errors),
                   "p50 (ms)": f"{row.p50_ms:,.0f}", "p95 (ms)": f"{row.p95_ms:,.0f}", "max (ms)": f"{row.max_ms:,.0f}",
                   "median wait (ms)": f"{row.p50_wait_ms:,.0f}"} for row in summarise(timings)], hide_index=True)
    st.caption(f"The last {len(timings):,} calls, over {since / 60:,.1f} minutes.")
else:
    st.caption("No model call yet.")
