"""The extension system's internals: discovery (registry), the host that loads scripts and isolates
failures (host), scripts and their runner (scripts), the `p` object and Processed (processing), callbacks.

Extensions must not import from here: their one public module is `webui.extensions_api`.
"""
