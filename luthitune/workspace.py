"""A workspace: the folder that holds ``luthitune.yaml``, ``config/``, ``checkpoints/``, ``data/`` and ``models/``,
and how ``luthitune init`` creates one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from luthitune.config import Config, default_config_yaml
from luthitune.configfiles import load_model, read_text
from luthitune.errors import ConfigError, WorkspaceError
from luthitune.training.hyperparameters import Hyperparameters, default_hyperparameters_yaml, note_ignored_keys

CONFIG_FILE = "luthitune.yaml"
HYPERPARAMETERS_FILE = Path("config") / "hyperparameters.yaml"
INVITATION_FILE = Path("config") / "lyra_dossier.txt"


def resolve_workspace(workspace: Path | str | None = None) -> Path:
    """``--workspace`` wins, then ``LUTHITUNE_HOME``, then the current directory."""
    if workspace is not None and str(workspace) != "":
        return Path(workspace).expanduser().resolve()
    env = os.environ.get("LUTHITUNE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path.cwd().resolve()


class Workspace:
    """A folder holding ``luthitune.yaml``, ``checkpoints/``, ``data/`` and ``models/``."""

    def __init__(self, root: Path, config: Config):
        self.root = root
        self.config = config

    @classmethod
    def open(cls, workspace: Path | str | None = None, *, require: bool = True) -> Workspace:
        root = resolve_workspace(workspace)
        if not root.is_dir():
            raise WorkspaceError(f"Workspace folder {root} does not exist. Run `luthitune init {root}`.")
        cfg_path = root / CONFIG_FILE
        if cfg_path.exists():
            config = load_model(Config, cfg_path)
        elif require:
            raise WorkspaceError(
                f"{root} is not a LuthiTune workspace (no {CONFIG_FILE}). "
                f"Run `luthitune init {root}`, or pass --workspace / set LUTHITUNE_HOME."
            )
        else:
            config = Config()
        return cls(root, config)

    def _path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.root / p

    @property
    def checkpoints_dir(self) -> Path:
        return self._path(self.config.paths.checkpoints)

    @property
    def data_dir(self) -> Path:
        return self._path(self.config.paths.data)

    @property
    def models_dir(self) -> Path:
        return self._path(self.config.paths.models)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "luthitune.db"

    @property
    def base_cache_dir(self) -> Path:
        """Where dequantized base weights are cached. ``LUTHITUNE_BASE_CACHE`` shares one cache."""
        env = os.environ.get("LUTHITUNE_BASE_CACHE")
        return Path(env).expanduser() if env else self.models_dir / "base"

    def probe_sets(self, path: str | None) -> dict[str, Any]:
        """The evaluation's probe sets: the packaged ones, with the probe file ``path`` (relative to the workspace)
        over them. A malformed file is a :class:`ConfigError` naming the file, the set and the field."""
        from luthitune.evaluation.probes import probe_sets

        if not path:
            return probe_sets()
        file = Path(path).expanduser()
        return probe_sets(file if file.is_absolute() else self.root / file)

    def hyperparameters(self) -> Hyperparameters:
        path = self.root / HYPERPARAMETERS_FILE
        if not path.exists():
            return Hyperparameters()
        hp = load_model(Hyperparameters, path)
        note_ignored_keys(hp, path)
        return hp

    def invitation(self) -> str:
        """The interview invitation: ``config/lyra_dossier.txt`` if present, else the packaged one."""
        path = self.root / INVITATION_FILE
        if path.exists():
            text = read_text(path).strip()
            if not text:
                raise ConfigError(f"{path} is empty. Write the invitation there or delete the file.")
            return text
        from luthitune.prompts import load_text

        return load_text("invitation.md").strip()

    def ensure_dirs(self) -> None:
        """The workspace's folders, created when missing; one that cannot be made or used is an error naming it and
        the key that sets it (``paths.*`` in luthitune.yaml)."""
        for key, d in (("checkpoints", self.checkpoints_dir), ("data", self.data_dir), ("models", self.models_dir)):
            if d.is_dir():
                continue
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = "something that is not a folder is in the way" if d.exists() else exc.strerror
                raise WorkspaceError(
                    f"The workspace's {key} folder {d} cannot be created: {why}. It is `paths.{key}` in "
                    f"{self.root / CONFIG_FILE}: point it at a folder you can write (relative paths are inside the "
                    "workspace), or create that folder, or mount the drive it is on."
                ) from None


def init_workspace(root: Path, *, force: bool = False, seed: int | None = None) -> tuple[Workspace, list[Path]]:
    """Create (or complete) a workspace. Existing files are kept unless ``force``; a new ``luthitune.yaml`` gets
    ``sampling.seed: seed`` when one is given."""
    root.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    cfg = root / CONFIG_FILE
    if force or not cfg.exists():
        cfg.write_text(default_config_yaml(seed), encoding="utf-8")
        created.append(cfg)
    ws = Workspace.open(root)
    for d in (ws.checkpoints_dir, ws.data_dir, ws.models_dir, root / "config"):
        if not d.exists():
            d.mkdir(parents=True)
            created.append(d)
    hp = root / HYPERPARAMETERS_FILE
    if force or not hp.exists():
        hp.write_text(default_hyperparameters_yaml(), encoding="utf-8")
        created.append(hp)
    ws.hyperparameters()  # validate what is there
    return ws, created
