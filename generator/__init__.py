"""Everything on the latent side of the pipeline: generator backends behind one interface,
the registry that builds them from a spec, and the tools that turn a generator into data."""

from generator.interface import Generator, GeneratorSpecError
from generator.registry import available_generators, build_generator

__all__ = ["Generator", "GeneratorSpecError", "available_generators", "build_generator"]
