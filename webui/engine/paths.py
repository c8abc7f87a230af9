"""Where models, outputs and settings live, following A1111's folder conventions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Extensions shipped with the app (same layout as DATA/extensions/<name>); never installed or updated by the UI.
BUILTIN_EXTENSIONS_DIR = REPO_ROOT / "extensions-builtin"


@dataclass(frozen=True)
class DataPaths:
    data_dir: Path
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    embeddings_dirs: tuple[Path, ...]
    depth_dir: Path
    outputs_dir: Path
    extensions_dir: Path
    config_file: Path
    cache_file: Path
    builtin_extensions_dir: Path = BUILTIN_EXTENSIONS_DIR

    @classmethod
    def create(
        cls,
        data_dir: Path | str | None = None,
        ckpt_dir: Path | str | None = None,
        vae_dir: Path | str | None = None,
        lora_dir: Path | str | None = None,
        embeddings_dir: Path | str | None = None,
    ) -> "DataPaths":
        root = Path(data_dir).resolve() if data_dir else REPO_ROOT
        models = root / "models"
        embeddings = (Path(embeddings_dir),) if embeddings_dir else (models / "embeddings", root / "embeddings")
        return cls(
            data_dir=root,
            ckpt_dir=Path(ckpt_dir) if ckpt_dir else models / "Stable-diffusion",
            vae_dir=Path(vae_dir) if vae_dir else models / "VAE",
            lora_dir=Path(lora_dir) if lora_dir else models / "Lora",
            embeddings_dirs=embeddings,
            depth_dir=models / "depth",
            outputs_dir=root / "outputs",
            extensions_dir=root / "extensions",
            config_file=root / "config.json",
            cache_file=root / "cache.json",
        )

    def extension_dirs(self) -> list[Path]:
        """Built-in extensions first, so a user extension cannot hide one of the same name."""
        return [self.builtin_extensions_dir, self.extensions_dir]

    def ensure(self) -> None:
        """Create the folders a user is expected to drop files into."""
        for folder in (self.ckpt_dir, self.vae_dir, self.lora_dir, self.embeddings_dirs[0], self.depth_dir,
                       self.outputs_dir, self.extensions_dir):
            folder.mkdir(parents=True, exist_ok=True)
