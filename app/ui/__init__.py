"""The browser UI (Gradio): the page, its Batch and Video tabs, and the upload cache it reads."""
