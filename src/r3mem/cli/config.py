"""The command line's config file: defaults for options, so a machine's store, model or port is set once.

`$R3MEM_CONFIG`, else `config.toml` in the user config folder (`~/.config/r3mem/config.toml` on Linux):

    store = "postgresql://me@db/r3mem"     # --store of every command that has it
    user = "me"                            # --user
    model = "/models/my-adapter"           # --model
    [serve]                                # options of one command (`[memory.list]` for a subcommand)
    port = 8080
    host = "0.0.0.0"

A key is an option's name (`base_model` for `--base-model`). Precedence: the flag, then its environment
variable (`R3MEM_STORE`, `R3MEM_USER`, ...), then this file, then the built-in default. A key no command
takes, an unknown table or a file that is not TOML is refused in one line before any command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r3mem.cli.common import CLIError

__all__ = ["config_path", "default_map"]


def config_path() -> Path:
    """`$R3MEM_CONFIG`, else the user config folder's `r3mem/config.toml`."""
    env = os.environ.get("R3MEM_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_path

    return user_config_path("r3mem") / "config.toml"


def _read(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise CLIError(f"{path}: reading a config file needs Python 3.11 or `pip install tomli`") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: not a valid TOML file ({str(exc).splitlines()[0]})") from None


def _params(cmd) -> set[str]:
    """The names of a command's options (not its arguments)."""
    return {p.name for p in cmd.params if getattr(p, "param_type_name", "") == "option" and p.name}


def _tree(group, prefix: str = "") -> dict[str, Any]:
    """Every command below `group` (a click/typer group), by dotted name ("serve", "memory.list")."""
    out: dict[str, Any] = {}
    for name, cmd in getattr(group, "commands", {}).items():
        out[prefix + name] = cmd
        out.update(_tree(cmd, f"{prefix}{name}."))
    return out


def _flat(data: dict[str, Any], commands: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(top-level settings, per-command tables by dotted name)."""
    top, tables = {}, {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for key, value in d.items():
            name = prefix + key
            if isinstance(value, dict) and (name in commands or any(c.startswith(name + ".") for c in commands)):
                tables[name] = {k: v for k, v in value.items() if not isinstance(v, dict)}
                walk({k: v for k, v in value.items() if isinstance(v, dict)}, name + ".")
            elif isinstance(value, dict):
                raise CLIError(f"[{name}]: no such command")
            elif prefix:
                raise CLIError(f"[{prefix[:-1]}] {key}: tables hold only settings and subcommands")
            else:
                top[key] = value

    walk(data, "")
    return top, tables


def default_map(group, path: Path | None = None) -> dict[str, Any] | None:
    """Click's `default_map` for `group` from the config file (None when there is no file)."""
    path = path or config_path()
    if not path.is_file():
        return None
    commands = _tree(group)
    top, tables = _flat(_read(path), commands)
    known = set().union(*(_params(c) for c in commands.values()))
    for key in top:
        if key not in known:
            raise CLIError(f"{path}: {key!r} is no option of any command (keys are option names, "
                                   f"e.g. store, user, model, base_model)")
    for name, settings in tables.items():
        for key in settings:
            if key not in _params(commands[name]):
                raise CLIError(f"{path}: [{name}] {key!r} is no option of `r3mem {name.replace('.', ' ')}`")
    out: dict[str, Any] = {}
    for name, cmd in commands.items():
        values = {k: v for k, v in top.items() if k in _params(cmd)} | tables.get(name, {})
        node = out
        for part in name.split(".")[:-1]:
            node = node.setdefault(part, {})
        leaf = node.setdefault(name.split(".")[-1], {})
        leaf.update(values)
    return out
