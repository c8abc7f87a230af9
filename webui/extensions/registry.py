"""Finding installed extensions: one folder per extension under each extensions folder.

An extension folder may hold `scripts/*.py`, `javascript/*.js`, `style.css`, `metadata.ini`, `preload.py`,
`install.py` and `requirements.txt`. This module only looks at the files; loading scripts is the host's job.
"""
from __future__ import annotations

import configparser
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


@dataclass
class Extension:
    name: str
    path: Path
    enabled: bool
    builtin: bool
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)   # parsed metadata.ini sections
    errors: list[str] = field(default_factory=list)                     # problems found while reading the folder

    def _files(self, folder: str, pattern: str) -> list[Path]:
        base = self.path / folder
        if not base.is_dir():
            return []
        return sorted(p for p in base.glob(pattern) if p.is_file())

    def script_files(self) -> list[Path]:
        return self._files("scripts", "*.py")

    def javascript_files(self) -> list[Path]:
        return self._files("javascript", "*.js")

    def stylesheet(self) -> Path | None:
        css = self.path / "style.css"
        return css if css.is_file() else None

    def file(self, name: str) -> Path | None:
        """`preload.py`, `install.py`, `requirements.txt`, … when the extension has it."""
        path = self.path / name
        return path if path.is_file() else None

    @property
    def display_name(self) -> str:
        return self.metadata.get("Extension", {}).get("Name") or self.name

    @property
    def requires(self) -> list[str]:
        """Names from metadata.ini's `[Extension] Requires = a, b`."""
        raw = self.metadata.get("Extension", {}).get("Requires", "")
        return [part.strip() for part in raw.split(",") if part.strip()]


def read_metadata(path: Path) -> tuple[dict[str, dict[str, str]], str | None]:
    """metadata.ini as {section: {key: value}}, keys in their original case; an error message if unreadable."""
    if not path.is_file():
        return {}, None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str   # keep "Name", "Requires" as written
    try:
        parser.read_string(path.read_text(encoding="utf-8", errors="replace"), source=str(path))
    except configparser.Error as exc:
        return {}, f"metadata.ini is not valid: {exc}"
    return {section: dict(parser.items(section)) for section in parser.sections()}, None


def _is_extension_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__"))


def read_extension(path: Path, enabled: bool, builtin: bool) -> Extension:
    metadata, error = read_metadata(path / "metadata.ini")
    ext = Extension(name=path.name, path=path.resolve(), enabled=enabled, builtin=builtin, metadata=metadata)
    if error:
        log.warning("extension %s: %s", path.name, error)
        ext.errors.append(error)
    return ext


def discover_extensions(dirs: list[Path], disabled: set[str],
                        builtin_dirs: Iterable[Path] | None = None) -> list[Extension]:
    """Every extension folder in `dirs`, in order of the dirs then by name.

    A folder name seen in an earlier dir hides the same name in later ones. `builtin_dirs` (default: the
    repo's extensions-builtin folder) marks which dirs hold built-in extensions.
    """
    from ..engine.paths import BUILTIN_EXTENSIONS_DIR

    builtin_set = {Path(d).resolve() for d in (builtin_dirs if builtin_dirs is not None else [BUILTIN_EXTENSIONS_DIR])}
    found: list[Extension] = []
    seen: set[str] = set()
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        builtin = folder.resolve() in builtin_set
        for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if not _is_extension_folder(path):
                continue
            if path.name in seen:
                log.warning("extension %s in %s is hidden by one of the same name found earlier", path.name, folder)
                continue
            seen.add(path.name)
            found.append(read_extension(path, enabled=path.name not in disabled, builtin=builtin))
    return found
