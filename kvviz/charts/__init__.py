"""Plotly figure builders, one module per page topic. They take records/plain data and know nothing of Streamlit."""
