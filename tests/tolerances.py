"""Tolerances for float32 results that no CPU promises to reproduce bit for bit.

Math libraries pick kernels by batch size and processor (vector width, blocking, summation order),
so the same network on a batch of 1 and a batch of 8, or on two CPUs, may round differently.  A
check between two float32 evaluations, or between float32 and a float64 reference, must therefore
allow what float32 arithmetic can lose, and no more: the tolerance comes from the computation's
shape, never from what one machine happened to produce.

The bound is Higham's for a sum of n products, |fl(sum) - sum| <= gamma_n * sum |a_i b_i| with
gamma_n ~ n u and u = 2^-24, accumulated over a chain of layers whose activations have the given
magnitude (1-Lipschitz activations such as tanh, sigmoid and ReLU do not amplify it).  It ignores
cancellation, so it is an upper bound, loose by design: a check that fails it has found a real bug.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2  # u = 2^-24


def float32_tolerance(*reduction_lengths: int, magnitude: float = 1.0) -> float:
    """Worst-case absolute float32 error of a chain of layers that each sum `n` products of
    magnitude about `magnitude` (e.g. a 3 x 3 convolution over 16 channels: n = 144)."""
    if not reduction_lengths or any(n < 1 for n in reduction_lengths):
        raise ValueError("give one positive reduction length per layer")
    return UNIT_ROUNDOFF * sum(reduction_lengths) * magnitude


def between_two_runs(*reduction_lengths: int, magnitude: float = 1.0) -> float:
    """Two float32 runs may each be off by the bound, in opposite directions."""
    return 2 * float32_tolerance(*reduction_lengths, magnitude=magnitude)


def reduction_lengths(model) -> list[int]:
    """Products summed per output value by each convolution and linear layer of a torch model,
    in module order: the `reduction_lengths` of its chain."""
    from torch import nn

    lengths = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            lengths.append(module.in_features + (module.bias is not None))
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = 1
            for side in module.kernel_size:
                kernel *= side
            lengths.append(module.in_channels // module.groups * kernel + (module.bias is not None))
    if not lengths:
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer")
    return lengths
