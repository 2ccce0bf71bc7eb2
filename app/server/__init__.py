"""The HTTP server: FastAPI routes (REST, health, metrics) with the Gradio UI mounted at ``/``."""
