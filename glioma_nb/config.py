"""Configuration: ``configs/base.yaml`` <- cohort YAML <- ``--set`` overrides, validated against base.

``base.yaml`` is both the defaults and the schema: unknown keys and wrongly typed values are errors,
and an empty mapping ``{}`` in base declares an open mapping whose keys are free.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from glioma_nb import paths

Config = dict[str, Any]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key, the file and the fix."""


def load_yaml(path: Path) -> Config:
    """Read a YAML mapping; an empty file is ``{}``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {paths.display_path(path)} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {paths.display_path(path)} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {paths.display_path(path)} must hold a mapping at top level")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Config:
    """Return ``base`` updated recursively by ``update`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> Config:
    """Turn ``"a.b.c=value"`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    node: Config = {}
    cur = node
    for k in keys[:-1]:
        cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = value
    return node


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def validate(config: Mapping[str, Any], schema: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Check ``config`` against ``schema`` (the base config); raise one error listing every problem."""
    problems = list(_problems(config, schema, prefix))
    if problems:
        raise ConfigError(f"invalid configuration ({source}):\n  - " + "\n  - ".join(problems))


def _problems(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> Iterable[str]:
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema)) or "(none)"
            yield f"unknown key '{dotted}'; known keys here: {known}"
            continue
        default = schema[key]
        if not _type_ok(default, value):
            yield (f"'{dotted}' must be {type(default).__name__} like the default {default!r}, "
                   f"got {type(value).__name__} {value!r}")
            continue
        if isinstance(default, dict) and default and isinstance(value, dict):
            yield from _problems(value, default, dotted + ".")


def base_config() -> Config:
    return load_yaml(paths.configs_dir() / "base.yaml")


def cohort_file(cohort: str) -> Path:
    """Path of ``configs/cohorts/<cohort>.yaml`` (or ``cohort`` itself if it is a YAML path)."""
    if cohort.endswith((".yaml", ".yml")):
        return paths.resolve_path(cohort)
    return paths.configs_dir() / "cohorts" / f"{cohort}.yaml"


def available_cohorts() -> list[str]:
    return sorted(p.stem for p in (paths.configs_dir() / "cohorts").glob("*.yaml"))


def _cohort_layers(path: Path, seen: tuple[Path, ...] = ()) -> Config:
    """A cohort file merged over the cohort it ``extends`` (a name in configs/cohorts or a YAML path),
    each layer validated against the schema."""
    if path in seen:
        raise ConfigError(f"cohort files extend each other in a loop: {[paths.display_path(p) for p in seen]}")
    cfg = load_yaml(path)
    parent = cfg.pop("extends", None)
    validate(cfg, base_config(), source=paths.display_path(path))
    if parent is None:
        return cfg
    ppath = cohort_file(str(parent))
    if not ppath.exists():
        raise ConfigError(f"{paths.display_path(path)}: extends {parent!r}, but {paths.display_path(ppath)} does not exist")
    return deep_merge(_cohort_layers(ppath, (*seen, path)), cfg)


def resolve_config(cohort: str = "synthetic", overrides: Iterable[str] | Mapping[str, Any] = ()) -> Config:
    """Resolve the configuration of a run: base <- cohort file <- overrides, validated.

    Parameters
    ----------
    cohort
        Name of a file in ``configs/cohorts/`` (without ``.yaml``) or a path to a cohort YAML.
    overrides
        ``["section.key=value", ...]`` strings as on the command line, or a nested mapping.
    """
    schema = base_config()
    path = cohort_file(cohort)
    if not path.exists():
        raise ConfigError(f"unknown cohort {cohort!r}: {paths.display_path(path)} does not exist; "
                          f"available: {', '.join(available_cohorts())}")
    cohort_cfg = _cohort_layers(path)
    cfg = deep_merge(schema, cohort_cfg)
    cfg["cohort"]["name"] = path.stem
    return with_overrides(cfg, overrides, schema)


def with_overrides(cfg: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] = (),
                   schema: Mapping[str, Any] | None = None) -> Config:
    """``cfg`` with ``overrides`` (``["section.key=value", ...]`` or a nested mapping) merged in, validated
    against the base configuration; ``cfg`` itself is not changed."""
    if isinstance(overrides, Mapping):
        over = dict(overrides)
    else:
        over = {}
        for item in overrides:
            over = deep_merge(over, parse_override(item))
    validate(over, schema if schema is not None else base_config(), source="command-line overrides")
    return deep_merge(cfg, over)


def parse_pairs(pairs: list[str], what: str) -> list[tuple[str, str]]:
    """``["a vs b", ...]`` -> [(a, b), ...]; anything else is an error naming the setting."""
    out = []
    for item in pairs:
        a, sep, b = str(item).partition(" vs ")
        if not sep or not a.strip() or not b.strip():
            raise ValueError(f"{what}: {item!r} is not a comparison; write it as 'feature set a vs feature set b'")
        out.append((a.strip(), b.strip()))
    return out


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form of a configuration."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def dump_yaml(cfg: Mapping[str, Any], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(dict(cfg), fh, sort_keys=False, default_flow_style=None)
