"""Turns a generator spec into a `Generator`.

A spec is a name, or a mapping as it stands in `params.yaml`:

    generator:
      name: testing            # a built-in name, or python:package.module:factory
      weights: null            # a weights path or a module handle, when the backend takes one
      options: {resolution: 64}

Built-in backends are listed by name with the dotted path of their factory, so a heavy backend
(TensorFlow) is imported only when asked for; adding a backend is one line here and never touches
the callers.  A factory is called as `factory(weights=..., **options)` and returns a `Generator`;
a user's factory may also return an `nn.Module` with a `latent_dim` attribute, which is wrapped.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from generator.interface import Generator, GeneratorSpecError

PYTHON_PREFIX = "python:"

BUILTIN_GENERATORS: dict[str, str] = {
    "testing": "generator.backends.testing:build_testing_generator",
    "house": "generator.backends.house:build_house_generator",
    "tfhub-bigbigan": "generator.backends.tfhub:build_tfhub_bigbigan",
}


def available_generators() -> list[str]:
    """Names of the built-in backends (a user's own is named `python:package.module:factory`)."""
    return sorted(BUILTIN_GENERATORS)


def command_spec(params_spec: str | Mapping[str, Any] | None, name: str | None = None,
                 weights: str | None = None) -> dict[str, Any]:
    """The spec a command builds: the parameters file's, or another generator named on the
    command line (`name`, with its `weights`), or the file's generator with other `weights`.
    A spec that cannot be built is refused here, before any work."""
    if name:
        return {"name": name, "weights": weights}
    if params_spec is None:
        raise GeneratorSpecError("the parameters file has no `generator` section: name a generator")
    try:
        _normalise(params_spec)
    except GeneratorSpecError as error:
        raise GeneratorSpecError(f"the parameters file's `generator` section: {error}") from error
    spec = {"name": params_spec} if isinstance(params_spec, str) else dict(params_spec)
    if weights is not None:
        spec["weights"] = weights
    return spec


def build_generator(spec: str | Mapping[str, Any]) -> Generator:
    """Build the generator a spec describes; raise `GeneratorSpecError` saying what is wrong."""
    name, weights, options = _normalise(spec)
    if name.startswith(PYTHON_PREFIX):
        factory = _import_factory(name[len(PYTHON_PREFIX):], name)
    elif name in BUILTIN_GENERATORS:
        factory = _import_factory(BUILTIN_GENERATORS[name], name)
    else:
        raise GeneratorSpecError(
            f"unknown generator {name!r}; built-in generators are {', '.join(available_generators())}, "
            f"or name your own factory as '{PYTHON_PREFIX}package.module:factory'")
    kwargs = dict(options)
    if weights is not None:
        kwargs["weights"] = weights
    _check_arguments(factory, kwargs, name)
    made = factory(**kwargs)
    return _as_generator(made, name)


def _normalise(spec: str | Mapping[str, Any]) -> tuple[str, Any, dict]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise GeneratorSpecError(f"a generator spec is a name or a mapping, got {type(spec).__name__}")
    unknown = set(spec) - {"name", "weights", "options"}
    if unknown:
        raise GeneratorSpecError(
            f"unknown keys in generator spec: {', '.join(sorted(unknown))} (allowed: name, weights, options)")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise GeneratorSpecError("a generator spec needs a non-empty string `name`")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise GeneratorSpecError(f"generator `options` must be a mapping, got {type(options).__name__}")
    return name, spec.get("weights"), dict(options)


def _import_factory(target: str, name: str) -> Callable[..., Any]:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise GeneratorSpecError(
            f"generator {name!r}: expected '{PYTHON_PREFIX}package.module:factory', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise GeneratorSpecError(
                f"generator {name!r}: no module named {module_name!r} "
                f"(is its package installed and on PYTHONPATH?)") from error
        raise
    factory = getattr(module, attribute, None)
    if factory is None:
        raise GeneratorSpecError(f"generator {name!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise GeneratorSpecError(f"generator {name!r}: {module_name}.{attribute} is not callable")
    return factory


def _check_arguments(factory: Callable[..., Any], kwargs: dict, name: str) -> None:
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise GeneratorSpecError(f"generator {name!r} does not accept these settings: {error}") from error
    except ValueError:  # a builtin without a signature: let the call itself decide
        pass


def _as_generator(made: Any, name: str) -> Generator:
    if isinstance(made, Generator):
        return made
    if isinstance(made, torch.nn.Module):
        from generator.backends.torch_module import TorchModuleGenerator
        encoder = getattr(made, "encoder", None)
        return TorchModuleGenerator(made, name=name.removeprefix(PYTHON_PREFIX),
                                    encoder=encoder if isinstance(encoder, torch.nn.Module) else None)
    raise GeneratorSpecError(
        f"generator {name!r}: the factory returned {type(made).__name__}, expected a "
        f"generator.Generator or a torch.nn.Module with a `latent_dim` attribute")
