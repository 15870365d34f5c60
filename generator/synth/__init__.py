"""Synthetic (image, mask) pairs: masks from a latent shift, the paper's filters, shards.

The data's way, one module per step (img2dataset's roles):

    samplers     reader: counter-based latents, standard Gaussian or a bank's neighbourhood
    masks        M = [gray(G(z + h)) > gray(G(z))]
    filters      size, histogram and connected-component filters, vectorised over a batch
    worker       renders one shard: generate, mask, filter, encode
    writer       deterministic tar shards under a temporary name, then renamed; per-shard stats
    distributor  spreads shards over worker processes (CPU) or runs them in batches (GPU)
    manifest     the set's manifest.json
    folder       the output folder: complete shards, resume, overwrite, clean-up
    settings     the `synth` section of params.yaml, validated
    main         the `gen-synth` command; `verify` and `preview` read the shards back
"""

from generator.synth.filters import FilterConfig, FilterResult, apply_filters
from generator.synth.masks import gray, synthesize_masks

__all__ = ["FilterConfig", "FilterResult", "apply_filters", "gray", "synthesize_masks"]
