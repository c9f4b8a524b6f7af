"""The review app's pages, one file each (run by ``st.navigation``, not imported)."""
