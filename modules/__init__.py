"""A thin A1111 compatibility layer: the `modules.*` names small AUTOMATIC1111 extensions import, mapped onto
this app's hook API (webui/extensions_api.py). Nothing in the app depends on this package.

Supported names are listed in docs/extensions.md ("A1111 compatibility"). `modules.shared` is a global in
A1111; here it is bound to the App whose extension host last ran extension code (see `_bridge`): one App
per process.
"""
