"""BigBiGAN from TF-Hub behind the common `Generator` interface, differentiable from PyTorch.

The module is any SavedModel (TF-Hub's TF1 format included) with BigBiGAN's two signatures:

    generate: z [N, latent_dim] float32 -> default [N, 128, 128, 3], upsampled [N, 256, 256, 3]
    encode:   x [N, 256, 256, 3] in [-1, 1] -> z_mean, z_sample, default [N, latent_dim]

`weights` is the module handle: an http(s) URL (downloaded and cached by tensorflow_hub under
TFHUB_CACHE_DIR) or a local folder holding a downloaded, extracted module.  The identity digest
hashes the module's `saved_model.pb` and `variables/variables.index` (the index holds a checksum
of every variable), so a URL and the folder it downloads to have the same identity.

Images cross between the frameworks as host arrays: torch NCHW -> numpy NHWC -> TensorFlow and
back, in batches of `batch_size`.  `generate` and `encode` are differentiable from PyTorch:
`TensorFlowCall` is a `torch.autograd.Function` whose backward re-runs the batch under
`tf.GradientTape` and returns TensorFlow's vector-Jacobian product (re-running costs one forward
pass but keeps no TensorFlow state between the two passes).  `encode` brings other image sizes to
its 256 x 256 input with `generator.image_io.fit_square` (shorter side resized, centre crop).
The `z_sample` encoder output is random, so its gradient belongs to a fresh sample.

TensorFlow is imported on first use, never at package import, and is told to grow its GPU memory
on demand so that PyTorch can share the card.  It runs where `to(device)` puts the generator:
cuda:N runs it on /GPU:N, anything else on the CPU (the default, as for every backend).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from generator.image_io import fit_square
from generator.interface import Generator, GeneratorSpecError, digest_bytes

DEFAULT_HANDLE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"
GENERATE_SIGNATURE, GENERATE_INPUT = "generate", "z"
ENCODE_SIGNATURE, ENCODE_INPUT = "encode", "x"
URL_SCHEMES = {"http", "https"}


@functools.cache
def import_tensorflow() -> Any:
    """TensorFlow, with memory growth on every GPU (set before anything else touches them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # TensorFlow already initialised the GPU in this process
            warnings.warn(f"could not set TensorFlow memory growth on {gpu.name}: {error}; TensorFlow "
                          f"may reserve most of the GPU memory PyTorch needs", RuntimeWarning, stacklevel=2)
    return tf


def import_tensorflow_hub() -> Any:
    import_tensorflow()
    with warnings.catch_warnings():  # tensorflow_hub still imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import tensorflow_hub as hub
    return hub


def how_to_use_a_local_copy(handle: str) -> str:
    """Instructions for fetching a module on a machine with network access and using it offline."""
    url = handle if is_url(handle) else DEFAULT_HANDLE
    archive_url = url + "?tf-hub-format=compressed" if "tfhub.dev" in url else url
    return (
        "To use a downloaded copy instead, on a machine with network access run\n"
        f"    curl -L -o module.tar.gz '{archive_url}'\n"
        "    mkdir bigbigan-module && tar -xzf module.tar.gz -C bigbigan-module\n"
        f"(or: python -c \"import tensorflow_hub as hub; print(hub.resolve('{url}'))\" prints the "
        "cached folder), copy the folder to this machine and point the spec at it:\n"
        "    generator:\n"
        "      name: tfhub-bigbigan\n"
        "      weights: /path/to/bigbigan-module   # the folder that holds saved_model.pb")


def is_url(handle: str) -> bool:
    return urlparse(handle).scheme in URL_SCHEMES


def resolve_module_folder(handle: str) -> Path:
    """The local folder of a module handle (downloading a URL into the cache), checked to hold a SavedModel."""
    if not isinstance(handle, (str, Path)) or not str(handle):
        raise GeneratorSpecError(f"tfhub-bigbigan: `weights` must be a module URL or folder, got {handle!r}")
    handle = str(handle)
    if is_url(handle):
        hub = import_tensorflow_hub()
        try:
            folder = Path(hub.resolve(handle))
        except Exception as error:  # any failure to fetch (network, HTTP, archive) means the same to the user
            raise GeneratorSpecError(
                f"tfhub-bigbigan: cannot fetch the module {handle} ({type(error).__name__}: {error}).\n"
                + how_to_use_a_local_copy(handle)) from error
    else:
        folder = Path(handle).expanduser()
        if not folder.exists():
            raise GeneratorSpecError(
                f"tfhub-bigbigan: no module folder at {folder}.\n" + how_to_use_a_local_copy(handle))
        if folder.is_file():
            hint = (f"extract it first: mkdir bigbigan-module && tar -xzf {folder} -C bigbigan-module"
                    if folder.name.endswith((".tar.gz", ".tgz", ".tar")) else
                    "`weights` must be the module's folder")
            raise GeneratorSpecError(f"tfhub-bigbigan: {folder} is a file; {hint}")
    if not any((folder / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise GeneratorSpecError(
            f"tfhub-bigbigan: {folder} is not a TF-Hub module or SavedModel folder (no saved_model.pb).\n"
            + how_to_use_a_local_copy(handle))
    return folder


def module_digest(folder: Path) -> str:
    """Digest of the graph definition and the variable index (which checksums every variable)."""
    graph = folder / "saved_model.pb"
    if not graph.is_file():
        graph = folder / "saved_model.pbtxt"
    chunks = [graph.read_bytes()]
    index = folder / "variables" / "variables.index"
    if index.is_file():
        chunks.append(index.read_bytes())
    return digest_bytes(*chunks)


class TensorFlowSignature:
    """One TensorFlow signature as a batched torch -> torch function with a vector-Jacobian product.

    `channels_last_input` / `channels_last_output` say which side carries images, which TensorFlow
    holds as NHWC and PyTorch as NCHW.
    """

    def __init__(self, tf: Any, function: Any, input_name: str, output_key: str, batch_size: int,
                 channels_last_input: bool = False, channels_last_output: bool = False) -> None:
        self.tf = tf
        self.function = function
        self.input_name = input_name
        self.output_key = output_key
        self.batch_size = batch_size
        self.channels_last_input = channels_last_input
        self.channels_last_output = channels_last_output
        self.tf_device = "/CPU:0"  # set by TFHubBigBiGAN.to to match the torch device

    def _to_tf(self, tensor: torch.Tensor, channels_last: bool) -> Any:
        array = tensor.detach().to("cpu", torch.float32).numpy()
        # layout changes in numpy: on a busy CPU it copies strided arrays several times faster
        array = array.transpose(0, 2, 3, 1) if channels_last else array
        return self.tf.constant(np.ascontiguousarray(array))

    @staticmethod
    def _to_torch(chunks: list[np.ndarray], channels_last: bool, like: torch.Tensor) -> torch.Tensor:
        array = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        array = array.transpose(0, 3, 1, 2) if channels_last else array
        # a fresh array: TensorFlow's .numpy() may share memory with its own buffers
        array = np.array(array, dtype=np.float32, order="C", copy=True)
        return torch.from_numpy(array).to(like.device)

    def _call(self, inputs: Any) -> Any:
        with self.tf.device(self.tf_device):
            return self.function(**{self.input_name: inputs})[self.output_key]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Outputs for a torch batch, computed `batch_size` rows at a time."""
        chunks = [self._call(self._to_tf(chunk, self.channels_last_input)).numpy()
                  for chunk in torch.split(inputs, self.batch_size)]
        return self._to_torch(chunks, self.channels_last_output, inputs)

    def vector_jacobian_product(self, inputs: torch.Tensor, grad_outputs: torch.Tensor) -> torch.Tensor:
        """grad_outputs^T d outputs / d inputs, by TensorFlow's gradient tape, batch by batch."""
        grads = []
        for chunk, grad_chunk in zip(torch.split(inputs, self.batch_size), torch.split(grad_outputs, self.batch_size)):
            tf_inputs = self._to_tf(chunk, self.channels_last_input)
            tf_grad_outputs = self._to_tf(grad_chunk, self.channels_last_output)
            with self.tf.GradientTape() as tape:
                tape.watch(tf_inputs)
                outputs = self._call(tf_inputs)
            grad = tape.gradient(outputs, tf_inputs, output_gradients=tf_grad_outputs)
            if grad is None:  # the output does not depend on the input
                grad = self.tf.zeros_like(tf_inputs)
            grads.append(grad.numpy())
        return self._to_torch(grads, self.channels_last_input, inputs).to(inputs.dtype)


class TensorFlowCall(torch.autograd.Function):
    """Runs a `TensorFlowSignature` inside PyTorch autograd; backward is TensorFlow's VJP."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, signature: TensorFlowSignature) -> torch.Tensor:
        ctx.signature = signature
        ctx.save_for_backward(inputs)
        return signature.forward(inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_outputs: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inputs,) = ctx.saved_tensors
        return ctx.signature.vector_jacobian_product(inputs, grad_outputs), None


def _input_spec(function: Any, input_name: str, signature_name: str, folder: Path) -> Any:
    _, kwargs = function.structured_input_signature
    if input_name not in kwargs:
        raise GeneratorSpecError(
            f"tfhub-bigbigan: the `{signature_name}` signature of {folder} takes {sorted(kwargs)}, "
            f"expected an input named `{input_name}`")
    return kwargs[input_name]


def _check_output(function: Any, key: str, signature_name: str, option: str, folder: Path) -> Any:
    outputs = function.structured_outputs
    if not isinstance(outputs, dict) or key not in outputs:
        available = sorted(outputs) if isinstance(outputs, dict) else []
        raise GeneratorSpecError(
            f"tfhub-bigbigan: the `{signature_name}` signature of {folder} has no output {key!r} "
            f"(`{option}` must be one of {available})")
    return outputs[key]


class TFHubBigBiGAN(Generator):
    """BigBiGAN (or any module with its signatures) loaded with tensorflow_hub."""

    name = "tfhub-bigbigan"
    differentiable = True

    def __init__(self, handle: str = DEFAULT_HANDLE, output: str = "default", encoder_output: str = "z_mean",
                 batch_size: int = 32) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GeneratorSpecError(f"tfhub-bigbigan: batch_size must be a positive integer, got {batch_size!r}")
        self.handle = str(handle)
        self.folder = resolve_module_folder(self.handle)
        hub = import_tensorflow_hub()
        tf = import_tensorflow()
        try:
            self.module = hub.load(str(self.folder))
        except Exception as error:  # TensorFlow reports a damaged SavedModel with many error types
            raise GeneratorSpecError(
                f"tfhub-bigbigan: {self.folder} could not be loaded as a SavedModel "
                f"({type(error).__name__}: {error}).\n" + how_to_use_a_local_copy(self.handle)) from error
        signatures = dict(getattr(self.module, "signatures", {}) or {})
        if GENERATE_SIGNATURE not in signatures:
            raise GeneratorSpecError(
                f"tfhub-bigbigan: the module at {self.folder} has no `generate` signature (it has "
                f"{sorted(signatures) or 'none'}); a BigBiGAN module has `generate` (z -> default, "
                f"upsampled) and `encode` (x -> z_mean, z_sample, default)")
        generate = signatures[GENERATE_SIGNATURE]
        z_spec = _input_spec(generate, GENERATE_INPUT, GENERATE_SIGNATURE, self.folder)
        if z_spec.shape.rank != 2 or z_spec.shape[1] is None:
            raise GeneratorSpecError(f"tfhub-bigbigan: `generate` input z of {self.folder} has shape "
                                     f"{z_spec.shape}, expected [N, latent_dim]")
        self._latent_dim = int(z_spec.shape[1])
        output_spec = _check_output(generate, output, GENERATE_SIGNATURE, "output", self.folder)
        self.output = output
        self.batch_size = batch_size
        self._generate_call = TensorFlowSignature(tf, generate, GENERATE_INPUT, output, batch_size,
                                                  channels_last_output=True)
        self._resolution = self._output_side(output_spec)

        self._encode_call = None
        self._encoder_resolution = None
        self.encoder_output = encoder_output
        if ENCODE_SIGNATURE in signatures:
            encode = signatures[ENCODE_SIGNATURE]
            x_spec = _input_spec(encode, ENCODE_INPUT, ENCODE_SIGNATURE, self.folder)
            _check_output(encode, encoder_output, ENCODE_SIGNATURE, "encoder_output", self.folder)
            self._encoder_resolution = int(x_spec.shape[1]) if x_spec.shape.rank == 4 and x_spec.shape[1] else 256
            self._encode_call = TensorFlowSignature(tf, encode, ENCODE_INPUT, encoder_output, batch_size,
                                                    channels_last_input=True)
        self._digest = module_digest(self.folder)

    def _output_side(self, spec: Any) -> int:
        shape = getattr(spec, "shape", None)
        if shape is not None and shape.rank == 4 and shape[1] is not None:
            side = int(shape[1])
        else:  # the signature does not state its size: render one image and measure
            side = int(self._generate_call.forward(torch.zeros(1, self._latent_dim)).shape[-1])
        return side

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def weights_digest(self) -> str:
        return self._digest

    @property
    def has_encoder(self) -> bool:
        return self._encode_call is not None

    @property
    def encoder_resolution(self) -> int:
        return self._encoder_resolution if self.has_encoder else self.resolution

    def to(self, device: str | torch.device) -> "TFHubBigBiGAN":
        """Run TensorFlow where torch runs: /GPU:N for cuda:N, else the CPU."""
        super().to(device)
        if self.device.type == "cuda":
            tf_device = f"/GPU:{self.device.index or 0}"
        else:
            tf_device = "/CPU:0"
        for call in (self._generate_call, self._encode_call):
            if call is not None:
                call.tf_device = tf_device
        return self

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        return TensorFlowCall.apply(z, self._generate_call)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        side = self.encoder_resolution
        if tuple(images.shape[-2:]) != (side, side):
            images = fit_square(images, side)
        return TensorFlowCall.apply(images, self._encode_call)


def build_tfhub_bigbigan(weights: str = DEFAULT_HANDLE, output: str = "default", encoder_output: str = "z_mean",
                         batch_size: int = 32) -> TFHubBigBiGAN:
    """Registry factory.

    weights: module URL or local module folder (default: BigBiGAN ResNet-50 on tfhub.dev).
    output: `default` (128 x 128) or `upsampled` (256 x 256), the `generate` output to use.
    encoder_output: `z_mean` (deterministic), `z_sample` or `default`, the `encode` output to use.
    batch_size: rows per TensorFlow call, forward and backward.
    """
    return TFHubBigBiGAN(weights, output=output, encoder_output=encoder_output, batch_size=batch_size)
