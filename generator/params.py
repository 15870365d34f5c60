"""Reads the project's `params.yaml`: each pipeline stage owns one top-level section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole parameters file as a dict; a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file {path} not found (run from the project folder or pass --params)")
    try:
        with open(path) as f:
            params = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def load_section(section: str, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """One stage's section of the parameters file."""
    params = load_params(path)
    if section not in params:
        raise KeyError(f"{path} has no `{section}` section")
    return params[section]
