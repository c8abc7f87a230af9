"""Pure logic of the built-in scripts (X/Y/Z plot, prompt matrix, prompts from file, outpainting).

No Gradio and no app here: the scripts in `extensions-builtin/` wire these functions to the hook API.
"""
