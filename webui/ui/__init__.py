"""The Gradio face of the app. `blocks.build_ui(app)` builds the page; `webui/server.py` mounts it."""
