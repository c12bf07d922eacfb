"""``--config recipe.yaml``: one file with a command's settings, as ``trl dpo --config`` and ``llamafactory-cli train
x.yaml`` take, for ``luthitune run`` and ``luthitune train``.

The file's keys are the command's options, by their flag or parameter name (``scenarios``, ``consent-rounds`` or
``consent_rounds``, ``lr`` or ``learning_rate``, ``autopilot: true``), plus the sections the command names (``train``
and ``evaluation`` for ``run``; ``model``, ``lora``, ``training`` and ``dpo``, as in ``hyperparameters.yaml``, for
``train``). The values become the options' defaults (the context's ``default_map``), so a flag given on the command line
wins over the file. An unknown key or a value of the wrong type is an error naming the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from luthitune.errors import ConfigError

META = "luthitune.recipe"


def _names(ctx: typer.Context) -> dict[str, typer.CallbackParam]:
    """Every spelling a recipe may use for a parameter of the command: its name and its long flags."""
    out: dict[str, typer.CallbackParam] = {}
    for p in ctx.command.params:
        if p.name in (None, "config"):
            continue
        out[p.name] = p
        for opt in p.opts:
            if opt.startswith("--"):
                out[opt[2:].replace("-", "_")] = p
    return out


def _load(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    from luthitune.configfiles import read_yaml

    if value is None:
        return None
    sections: tuple[str, ...] = ctx.meta.get(META + ".sections", ())
    params = _names(ctx)
    defaults: dict[str, Any] = {}
    extra: dict[str, dict] = {}
    for key, raw in read_yaml(value).items():
        name = str(key).replace("-", "_")
        if name in params:
            p = params[name]
            try:  # converted and checked (types, ranges, paths) as the same value on the command line would be
                defaults[p.name] = p.process_value(ctx, raw)
            except Exception as exc:
                if not hasattr(exc, "format_message"):  # the CLI's BadParameter / MissingParameter
                    raise
                raise ConfigError(f"{value}: {key}: {exc.format_message()}") from None
        elif name in sections:
            if not isinstance(raw, dict):
                raise ConfigError(f"{value}: {key} must be a mapping of settings, not {type(raw).__name__}.")
            extra[name] = raw
        else:
            known = sorted({n for n, p in params.items() if n == p.name} | set(sections))
            raise ConfigError(
                f"{value}: unknown key {key!r} for `luthitune {ctx.command.name}`. Keys: {', '.join(known)}."
            )
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[META] = extra
    return value


def option(*sections: str) -> Any:
    """The ``--config`` option of a command whose recipe may also hold ``sections``."""

    def load(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
        ctx.meta[META + ".sections"] = sections
        return _load(ctx, param, value)

    listed = f" and the sections {', '.join(sections)}" if sections else ""
    return Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            is_eager=True,
            callback=load,
            help=f"A recipe YAML: this command's options as keys{listed}. Flags given here override its keys.",
        ),
    ]


def sections(ctx: typer.Context) -> dict[str, dict]:
    """The recipe's sections (``train:``, ``lora:``...), empty without ``--config``."""
    return dict(ctx.meta.get(META) or {})
