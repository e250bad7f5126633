"""The Streamlit what-if explorer over kvsim (`kvsim app`)."""
