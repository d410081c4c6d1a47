"""`--config FILE.yaml|FILE.json`: a command's options from a file, the command line overriding it.

The file is a mapping whose keys are the options' dest names (`batch_size`; the flag's spelling, `batch-size` or
`--batch-size`, is accepted too) and whose values go through the same parsers as the command line (`values`), so
a bad value is refused in one line naming the file and the key, and an unknown key in one line naming the closest
valid one, before any work. A flag given on the command line wins over the file. JSON needs nothing beyond a core
install; YAML is read with `yaml.safe_load` (PyYAML, the `lab` extra). `convscope train` writes the resolved
settings of every run as config.yaml and config.json, and either file given back to `--config` repeats the run.
"""
from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..extras import require
from ..files import read_json

SUFFIXES = (".yaml", ".yml", ".json")


def read_settings(path: str | Path) -> dict[str, Any]:
    """The mapping in a .yaml/.yml (yaml.safe_load: no object is ever constructed) or .json file; ValueError in one
    line when the file is of another kind, not valid, or not a mapping."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--config {path}: expected a .yaml, .yml or .json file")
    if path.suffix.lower() == ".json":
        settings = read_json(path)
    else:
        require("yaml", f"--config {path}")
        import yaml

        try:
            settings = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values; got "
                         f"{type(settings).__name__}")
    return settings


def _text(value: Any) -> str:
    """A file's value as the command line would give it: a list comma-joined, a mapping and a bool as JSON."""
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, (dict, bool)):
        return json.dumps(value)
    return str(value)


def _parse(action: argparse.Action, value: Any) -> Any:
    """`value` through `action`'s parser and choices, as argparse would take it; ArgumentTypeError when refused."""
    if value is None:
        if action.default is None:
            return None
        raise argparse.ArgumentTypeError("expected a value; got null")
    if isinstance(value, list) and not value and action.default == ():
        return ()   # an empty list where the default is one (a run's `log: []`)
    if action.nargs == 0:   # a switch (store_true)
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false; got {value!r}")
        return value
    if action.nargs == "?" and isinstance(value, bool) and value in (action.default, action.const):
        return value   # an option whose value is optional, given as off or as the bare flag (`resume: false`)
    text = _text(value)
    parse = action.type or str
    try:
        parsed = parse(text)
    except (TypeError, ValueError):   # a plain type (int, float); the `values` parsers raise ArgumentTypeError
        raise argparse.ArgumentTypeError(f"invalid {getattr(parse, '__name__', 'value')} value: {text!r}") from None
    if action.choices is not None and parsed not in action.choices:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(map(str, action.choices))})")
    return parsed


def _dest(key: Any, path: Path, actions: Mapping[str, argparse.Action]) -> str:
    """The option a file's key names; ValueError naming the key (and the closest valid one) when none."""
    dest = str(key).removeprefix("--").replace("-", "_")
    if dest not in actions:
        close = difflib.get_close_matches(dest, sorted(actions), n=1)
        raise ValueError(f"{path}: unknown key {str(key)!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                 "; the keys are the command's options (--help)"))
    return dest


def file_values(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options (dest -> parsed value) that the settings file `path` gives, parsed by `parser`'s actions."""
    path = Path(path)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    parsed: dict[str, Any] = {}
    for key, value in read_settings(path).items():
        dest = _dest(key, path, actions)
        if dest in parsed:
            raise ValueError(f"{path}: {dest} is given twice (as {dest!r} and as a flag spelling)")
        try:
            parsed[dest] = _parse(actions[dest], value)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{path}: key {str(key)!r} ({actions[dest].option_strings[0]}): {e}") from None
    return parsed


def explicit_dests(add_arguments: Callable[[argparse.ArgumentParser], None], argv: Sequence[str]) -> set[str]:
    """The options `argv` gives explicitly: parsed again by the options of `add_arguments`, every default
    suppressed."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    for a in parser._actions:
        a.default, a.required = argparse.SUPPRESS, False
    return set(vars(parser.parse_known_args(list(argv))[0]))


def apply_config(args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None],
                 required: Sequence[str] = ()) -> argparse.Namespace:
    """`args` with the options of `args.config`'s file set, except those the command line (`args.argv`, the
    command first) gives; ValueError when an option in `required` is given by neither."""
    if getattr(args, "config", None) is not None:
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        from_file = file_values(args.config, parser)
        explicit = explicit_dests(add_arguments, args.argv[1:])
        for dest, value in from_file.items():
            if dest not in explicit:
                setattr(args, dest, value)
    for dest in required:
        if getattr(args, dest, None) is None:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} is required: give it on the command line or in the --config file")
    return args
