"""The Streamlit review app (``audit app RUN``)."""
