"""`gen-info`: build a generator from a spec and print what the pipeline will record about it."""

from __future__ import annotations

import json

import click

from generator.interface import GeneratorSpecError
from generator.params import load_section
from generator.registry import available_generators, build_generator, command_spec


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default="params.yaml",
              show_default=True, help="Parameters file whose `generator` section is the spec to build.")
@click.option("--name", default=None,
              help="Build this generator instead of the one in --params: a built-in name or "
                   "python:package.module:factory.")
@click.option("--weights", default=None,
              help="Weights path or module handle: for --name, or else for the --params generator.")
@click.option("--list", "list_only", is_flag=True, help="Only list the built-in generator names.")
def main(params_path: str, name: str | None, weights: str | None, list_only: bool) -> None:
    """Print a generator's identity, latent size, resolution and capabilities as JSON.

    The identity (backend name and weights digest) is what manifests and direction files
    record, so this is the way to check which generator a data set was made with.
    """
    if list_only:
        click.echo("\n".join(available_generators()))
        return
    try:
        spec = command_spec(None if name else load_section("generator", params_path), name, weights)
        generator = build_generator(spec)
    except (GeneratorSpecError, FileNotFoundError, KeyError, ValueError) as error:
        raise click.ClickException(error.args[0] if isinstance(error, KeyError) else str(error)) from error
    click.echo(json.dumps({
        "identity": generator.identity,
        "latent_dim": generator.latent_dim,
        "resolution": generator.resolution,
        "encoder": generator.has_encoder,
        "encoder_resolution": generator.encoder_resolution if generator.has_encoder else None,
        "differentiable": generator.differentiable,
        "bundled_latent_bank": str(generator.bundled_latent_bank) if generator.bundled_latent_bank else None,
    }, indent=2))
