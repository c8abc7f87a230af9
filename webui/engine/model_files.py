"""Finding checkpoints and VAEs on disk, with A1111's naming (relative name, stem, title)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelFile:
    path: Path
    name: str          # path relative to its folder, '/'-separated: A1111's checkpoint "name"

    @property
    def stem(self) -> str:
        """The file name without extension: the infotext `Model` value."""
        return Path(self.name).stem

    @property
    def is_diffusers_folder(self) -> bool:
        return self.path.is_dir()

    @property
    def is_pickle(self) -> bool:
        return self.path.suffix.lower() in PICKLE_SUFFIXES

    @property
    def is_vae_file(self) -> bool:
        return ".vae." in self.path.name.lower()

    @property
    def filename(self) -> str:
        return str(self.path)


def _walk(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _diffusers_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p.parent for p in folder.rglob("model_index.json"))


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def list_checkpoints(folders: list[Path], extra_files: list[Path] = ()) -> list[ModelFile]:
    """Checkpoint files and diffusers folders; `*.vae.*` files are VAEs, not checkpoints.

    When a pickle and a .safetensors file share a stem, only the safetensors one is listed.
    """
    found: dict[str, ModelFile] = {}
    for folder in folders:
        for path in _walk(folder, CHECKPOINT_SUFFIXES) + _diffusers_folders(folder):
            if ".vae." in path.name.lower():
                continue
            found.setdefault(str(path.resolve()), ModelFile(path, _relative(path, folder)))
    for path in extra_files:
        found.setdefault(str(Path(path).resolve()), ModelFile(Path(path), Path(path).name))
    return _prefer_safetensors(sorted(found.values(), key=lambda m: m.name.lower()))


def _prefer_safetensors(files: list[ModelFile]) -> list[ModelFile]:
    safe_stems = {str(m.path.with_suffix("")) for m in files if m.path.suffix.lower() == ".safetensors"}
    return [m for m in files if not (m.is_pickle and str(m.path.with_suffix("")) in safe_stems)]


def list_vaes(vae_dir: Path, ckpt_dirs: list[Path]) -> list[ModelFile]:
    vaes = [ModelFile(p, _relative(p, vae_dir)) for p in _walk(vae_dir, VAE_SUFFIXES)]
    for folder in ckpt_dirs:
        vaes += [ModelFile(p, _relative(p, folder)) for p in _walk(folder, VAE_SUFFIXES) if ".vae." in p.name.lower()]
    return vaes


def find_auto_vae(checkpoint: ModelFile, vaes: list[ModelFile]) -> ModelFile | None:
    """A1111's 'Automatic': a VAE named after the checkpoint, beside it first, then in models/VAE."""
    stem = checkpoint.path.stem if not checkpoint.is_diffusers_folder else checkpoint.path.name
    beside = [v for v in vaes if v.path.parent == checkpoint.path.parent and v.path.name.startswith(stem + ".")]
    named = [v for v in vaes if v.path.name.split(".")[0] == stem]
    for candidate in beside + named:
        return candidate
    return None


def find_by_name(files: list[ModelFile], query: str) -> ModelFile | None:
    """Match A1111-style: exact name, title ('name [hash]'), stem, or file path."""
    query = query.strip()
    bare = query.split(" [")[0] if query.endswith("]") else query
    for match in (
        lambda m: m.name == bare,
        lambda m: str(m.path) == bare or str(m.path.resolve()) == bare,
        lambda m: m.stem == bare or Path(m.name).stem == bare,
        lambda m: m.path.name == bare,
    ):
        hits = [m for m in files if match(m)]
        if hits:
            return hits[0]
    return None
