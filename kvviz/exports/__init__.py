"""Exports of a Step through trace: a JSON file that loads back and replays, a CSV table, a self-contained HTML
report, and the Plotly config that gives every chart its PNG download button.

``trace_file`` writes and reads the JSON format (documented in ``docs/trace-format.md``) and checks a replay
against it; ``table`` builds the one-row-per-step table; ``html_report`` assembles the report; ``png`` holds the
chart config. None of them imports Streamlit, torch or transformers: they turn records into text and back.
"""
