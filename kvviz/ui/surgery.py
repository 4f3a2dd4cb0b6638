"""The Step through page's Cache surgery tab: choose positions, layers and KV heads, apply, compare.

Surgery runs on a copy of the session's cache (``kvviz.surgery``), so the trace, the cache and the next step are
never changed; the result is kept per browser session and dropped when the trace moves on or on Reset surgery.
What it does not do: compute (``kvviz.surgery``) or draw figures (``kvviz.charts.surgery``).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from kvviz.charts.style import measured_on, token_label
from kvviz.charts.surgery import surgery_figure
from kvviz.errors import KvvizError
from kvviz.exports.png import chart_config
from kvviz.surgery import ACTION_LABELS, ACTIONS, SurgeryOp, SurgeryResult, run_surgery
from kvviz.ui.server import run_on_model
from kvviz.ui.session import SessionTrace

_RESULT = "kvviz_surgery_result"
_WIDGETS = ("surgery_action", "surgery_positions", "surgery_layers", "surgery_heads")


def _cached_stepper(session: SessionTrace) -> Any:
    stepper = session.stepper
    return getattr(stepper, "cached", stepper)  # CompareStepper keeps its cached path as .cached


def reset_surgery() -> None:
    st.session_state.pop(_RESULT, None)
    for key in _WIDGETS:
        st.session_state.pop(key, None)


def _apply(session: SessionTrace, op_of: Any) -> None:
    stepper = _cached_stepper(session)
    try:
        op = op_of()
        result = run_on_model(stepper.loaded, session.id,
                              lambda: run_surgery(stepper.loaded, stepper.cache, stepper.ids, op, stepper.last_logits),
                              "surgery")
    except KvvizError as error:
        st.session_state[_RESULT] = (len(stepper.ids), str(error))
        return
    st.session_state[_RESULT] = (len(stepper.ids), result)


def surgery_panel(session: SessionTrace) -> None:
    stepper = _cached_stepper(session)
    ids = list(stepper.ids)
    loaded = stepper.loaded
    n = len(ids)
    st.caption(
        f"Change what the cache holds and see what the model would predict. The newest token "
        f"('{token_label(loaded.tokenizer.decode([ids[-1]]))}', position {n - 1}) is fed again over a **copy** of the "
        f"cache holding positions 0 to {n - 2}, changed as you choose, and once over an unchanged copy; the session's "
        "own cache, tokens and next step stay as they are."
    )
    if n < 2:
        st.info("Surgery needs at least one position before the newest token: use a longer prompt.")
        return
    held = st.session_state.get(_RESULT)
    if held is not None and held[0] != n:  # the trace moved on: the result described another cache
        reset_surgery()
        held = None
    layers = len(stepper.cache.layers)
    kv_heads = int(stepper.cache.layers[0].keys.shape[1])
    texts = [token_label(loaded.tokenizer.decode([token])) for token in ids[:-1]]
    action = st.segmented_control("Operation", ACTIONS, format_func=ACTION_LABELS.get, key="surgery_action",
                                  default="drop")
    positions = st.pills("Positions (click the tokens)", list(range(n - 1)), selection_mode="multi",
                         format_func=lambda p: f"{p}·{texts[p]}", key="surgery_positions")
    left, right = st.columns(2)
    chosen_layers = left.multiselect("Layers (none chosen: all)", list(range(layers)), key="surgery_layers")
    chosen_heads = right.multiselect("KV heads (none chosen: all)", list(range(kv_heads)), key="surgery_heads",
                                     disabled=action == "drop",
                                     help="Drop removes whole rows from a layer, in every KV head.")

    def op() -> SurgeryOp:
        return SurgeryOp(action or "drop", tuple(sorted(positions or ())), tuple(chosen_layers) or None,
                         None if action == "drop" else tuple(chosen_heads) or None)

    with st.container(horizontal=True):
        st.button("Apply surgery", key="surgery_apply", type="primary", on_click=_apply, args=(session, op))
        st.button("Reset surgery", key="surgery_reset", on_click=reset_surgery)
    if held is None:
        st.info("Choose an operation and positions, then press **Apply surgery**.")
        return
    if isinstance(held[1], str):
        st.error(held[1])
        return
    show_result(held[1], measured_on(loaded.card.name, str(loaded.device), loaded.dtype_name))


def show_result(result: SurgeryResult, measured: str) -> None:
    before, after = result.before[0], result.after[0]
    where = "every layer" if result.op.layers is None else f"layer{'s' if len(result.op.layers) > 1 else ''} " + \
        ", ".join(map(str, result.op.layers))
    heads = "" if result.op.heads is None else f", KV head{'s' if len(result.op.heads) > 1 else ''} " + \
        ", ".join(map(str, result.op.heads))
    verdict = ("**The next token changed**" if result.top_changed else "The next token stayed the same")
    st.markdown(
        f"{verdict}: '{token_label(before.text)}' ({before.probability:.1%}) with the untouched cache, "
        f"'{token_label(after.text)}' ({after.probability:.1%}) after {result.op.doing()} "
        f"in {where}{heads} ({result.rows_changed:,} rows of keys and "
        f"values). KL(untouched ‖ changed) = {result.kl:.4f} nats; the largest logit moved by "
        f"{result.max_logit_diff:.4f}."
    )
    if result.op.action == "swap":
        st.caption("Attention adds up the cached rows in any order, so exchanging two whole rows (key and value "
                   "together) changes nothing beyond float rounding: where a token sat is only in what its key and "
                   "value encode (RoPE's rotation of the key, in SmolLM2), not in its slot. Swap the values only to "
                   "see a change: the query then finds one token's key and reads the other's value.")
    if result.op.action == "zero":
        st.caption("A zero key still scores 0 against the query, so the position keeps a share of the attention "
                   "(exp(0) against the others' exp(score)); its zero value adds nothing for that share. Zeroing is "
                   "therefore not the same as dropping.")
    st.plotly_chart(surgery_figure(result, measured), key="surgery_chart", config=chart_config("surgery"))
    st.caption(f"Check: the unchanged copy reproduces the session's own next-token logits to within "
               f"{result.untouched_diff:.1e} (largest difference).")
