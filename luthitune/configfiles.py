"""Reading a workspace's configuration files: UTF-8 text, YAML mappings, and validation errors that name the file
and the field.

Every configuration schema (:mod:`luthitune.config`, :mod:`luthitune.training.hyperparameters`, a recipe, a probe
file) is read through :func:`load_model`, so a bad file reads the same whichever it is. The commented default files
that ``luthitune init`` writes are package data (``luthitune/defaults/``), read with :func:`default_file`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from luthitune.errors import ConfigError


class Strict(BaseModel):
    """A configuration section: unknown keys are errors, and so is assigning a bad value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_file(name: str) -> str:
    """A default file shipped with the package (``luthitune/defaults/NAME``)."""
    return resources.files("luthitune").joinpath("defaults", name).read_text(encoding="utf-8")


# Fields whose bad value may be a secret (an API key pasted in place of its variable's name, a URL with a password).
SECRET_FIELDS = {"openai.api_key_env", "checkpointer"}


def format_validation_error(err: ValidationError, path: Path | str) -> str:
    """A validation error as lines that name the file and each field, never echoing a secret's value."""
    lines = [f"Invalid configuration in {path}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden" and field.endswith(("api_key", "password", "token")):
            lines.append(
                f"  - field '{field}': secrets never go in luthitune.yaml (it is stored with every run); "
                "put the key in an environment variable and name it in openai.api_key_env"
            )
        elif e["type"] == "extra_forbidden":
            lines.append(f"  - field '{field}': unknown key (check the spelling; see `luthitune init`)")
        elif field in SECRET_FIELDS:  # the value may be a key or hold a password: never echo it
            lines.append(f"  - field '{field}': {e['msg']}")
        else:
            lines.append(f"  - field '{field}': {e['msg']} (got {e.get('input')!r})")
    lines.append("Fix the file and run the command again. Defaults: `luthitune init --print-defaults`.")
    return "\n".join(lines)


def read_text(path: Path) -> str:
    """A workspace text file (configuration, invitation) as UTF-8; an unreadable or non-UTF-8 file is a
    :class:`ConfigError` that names it and says what to do."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}). "
            "Save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), then run the command again."
        ) from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}. Check that the file exists and is readable.") from None


def parse_yaml(text: str, path: Path | str) -> dict[str, Any]:
    """A YAML mapping from ``text`` (the content of ``path``), with errors that give the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not a {type(data).__name__}.")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = read_text(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"Configuration file not found: {path}. Run `luthitune init` to create it.") from exc
    return parse_yaml(text, path)


def load_model(cls: type[BaseModel], path: Path, data: dict[str, Any] | None = None) -> Any:
    data = read_yaml(path) if data is None else data
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None
