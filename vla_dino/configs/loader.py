"""The one way a YAML file and command-line values become a config dataclass.

    tree = read_tree("configs/pretrain/cpu_smoke.yaml")        # YAML → dict, `base:` resolved
    config = load(PretrainConfig, path, {"train.steps": 100})  # + dotted overrides → draccus → validate()

Every config in the package is a tree of dataclasses decoded by draccus (`draccus.decode`), as in
LeRobot's and the plugins' CLIs. What this module adds, and why draccus' own parser
(`draccus.parse`) is not used for `python -m vla_dino.pretrain` and `python -m lerobot_env_vla_dino.demo`:

- Inheritance. A mapping with a `base: <file>` key (a path relative to the file that holds it)
  starts from that file's tree and changes only the keys it lists, at any depth; the base may
  have its own `base:`. The presets hold the SSL recipe this way
  (`ssl: {base: ../ssl/dinov2_default.yaml, optim: {drop_path: 0.1}}`). draccus' `!include`
  with YAML's `<<` merge is shallow: a preset's `optim:` would replace the recipe's whole
  `optim` section.
- The documented flags: repeatable and multi-value flags with dashes (`--frames A --frames B`,
  `--cameras front wrist`, `--benchmark-budgets 25 50`), bare switches (`--restart`,
  `--resume [CKPT]`), a key given twice with different values as an error naming both, and one
  `error: …` line (exit 2) for a bad or unknown key. draccus registers one `--field_name VALUE`
  option per field and lets the last of two values win.

So the command lines are argparse; the values they give are YAML scalars (`1e-4`, `true`,
`null`, `[a, b]`) set on the tree by dotted path (`ssl.optim.base_lr`, draccus' own syntax), and
draccus decodes the tree, so an unknown or ill-typed key is a ValueError naming its path.
`parse_flags` gives a flat dataclass (the demo's) one dashed flag per field, with the field's
comment as help and its default, decoded the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import draccus
import yaml
from draccus.wrappers.docstring import get_attribute_docstring

T = TypeVar("T")

BASE_KEY = "base"  # reserved in every mapping of a config file


# ------------------------------------------------------------------ files
def read_tree(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a nested dict, with every `base:` replaced by the tree it names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return _resolve_bases(_read_mapping(path), path, chain=(path.resolve(),))


def _read_mapping(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded or {}


def _resolve_bases(tree: dict[str, Any], path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = {key: _resolve_bases(value, path, chain) if isinstance(value, dict) else value
                for key, value in tree.items() if key != BASE_KEY}
    if BASE_KEY not in tree:
        return resolved
    base = (path.parent / str(tree[BASE_KEY])).resolve()
    if base in chain:
        raise ValueError(f"{path}: `base: {tree[BASE_KEY]}` inherits from itself ({' → '.join(map(str, chain))})")
    if not base.is_file():
        raise FileNotFoundError(f"{path}: `base: {tree[BASE_KEY]}` names no file ({base})")
    return merge_trees(_resolve_bases(_read_mapping(base), base, chain + (base,)), resolved)


def merge_trees(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


# ------------------------------------------------------------------ dotted keys
def parse_value(text: str) -> Any:
    """A command-line value as YAML (`1e-4`, `true`, `null`, `[a, b]`, `{k: v}`); draccus then
    converts it to the field's declared type."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Sets `a.b.c` in a nested dict, creating sections as needed; the value replaces what was there."""
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"bad override key {key!r}; expected a dotted path like ssl.optim.base_lr")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# ------------------------------------------------------------------ decoding
def load(config_class: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         what: str = "config") -> T:
    """YAML file (or the dataclass defaults when None) + dotted overrides → a config, validated
    by its `validate()` when it has one. Raises FileNotFoundError or ValueError naming the key."""
    tree = read_tree(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    try:
        config = draccus.decode(config_class, tree)
    except Exception as error:  # draccus names the offending dotted key
        source = f"{path}" if path is not None else "defaults"
        raise ValueError(f"bad {what} ({source} + overrides): {error}") from error
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


# ------------------------------------------------------------------ flat dataclass → flags
def _field_help(config_class: type, name: str) -> str:
    """A field's comment (above or inline), the text draccus shows in its own `--help`."""
    doc = get_attribute_docstring(config_class, name)
    return " ".join((doc.comment_above or doc.comment_inline or doc.docstring_below or "").split())


def _add_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One `--field-name` flag per field of a flat dataclass: help from its comment, its default
    shown; a bool defaulting to False is a bare switch, a tuple takes several values."""
    defaults = config_class()
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        default = getattr(defaults, item.name)
        flag = "--" + item.name.replace("_", "-")
        help_text = _field_help(config_class, item.name)
        if hints[item.name] is bool and default is False:
            parser.add_argument(flag, dest=item.name, action="store_true", help=help_text)
            continue
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        verbatim = hints[item.name] in (str, Path)  # a task or folder name stays as typed, even "null"
        parser.add_argument(flag, dest=item.name, type=str if verbatim else parse_value, default=argparse.SUPPRESS,
                            nargs="+" if typing.get_origin(hints[item.name]) is tuple else None,
                            metavar=item.name.upper(), help=f"{help_text} (default: {shown})".lstrip())


def parse_flags(parser: argparse.ArgumentParser, config_class: type[T], argv: list[str] | None = None) -> T:
    """`config_class` from the command line: one `--field-name` flag per field (a flat
    dataclass), decoded by draccus onto its defaults; a bad value is an argparse error (exit 2)."""
    _add_flags(parser, config_class)
    args = parser.parse_args(argv)
    names = {item.name for item in dataclasses.fields(config_class)}
    given = {key: value for key, value in vars(args).items() if key in names}
    try:
        return load(config_class, None, given)
    except ValueError as error:  # draccus' message names the field
        parser.error(str(error.__cause__ or error))
