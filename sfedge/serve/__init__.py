"""`sfedge serve`: an OpenAI-compatible HTTP server for questions about videos (see app.py)."""
