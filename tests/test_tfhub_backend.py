"""The TF-Hub BigBiGAN backend, proven on small SavedModels with BigBiGAN's signatures.

The modules are built here: `generate` (z [N, 120] -> default [N, 128, 128, 3] and upsampled
[N, 256, 256, 3], tanh outputs) and `encode` (x [N, 256, 256, 3] -> z_mean, z_sample, default
[N, 120]).  A float64 PyTorch copy of the same function is the trusted reference for values and
gradients; finite differences check the gradients independently.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generator import GeneratorSpecError, build_generator
from generator.backends import tfhub
from generator.image_io import fit_square
from tests.tolerances import UNIT_ROUNDOFF, float32_tolerance

LATENT_DIM, HIDDEN, COARSE = 120, 64, 8  # images are a coarse 8 x 8 grid upsampled by repetition


def module_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": rng.normal(0, 0.15, (LATENT_DIM, HIDDEN)).astype(np.float32),
            "w2": rng.normal(0, 0.3, (HIDDEN, COARSE * COARSE * 3)).astype(np.float32),
            "b2": rng.normal(0, 0.1, (COARSE * COARSE * 3,)).astype(np.float32),
            "enc": rng.normal(0, 0.2, (COARSE * COARSE * 3, LATENT_DIM)).astype(np.float32)}


def save_module(folder: Path, weights: dict[str, np.ndarray], signatures=("generate", "encode"),
                generate_input: str = "z") -> Path:
    import tensorflow as tf

    class SmallBigBiGAN(tf.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = tf.Variable(weights["w1"]), tf.Variable(weights["w2"])
            self.b2, self.enc = tf.Variable(weights["b2"]), tf.Variable(weights["enc"])

        def generate(self, z):
            coarse = tf.tanh(tf.tanh(z @ self.w1) @ self.w2 + self.b2)
            coarse = tf.reshape(coarse, [-1, COARSE, COARSE, 3])
            default = tf.repeat(tf.repeat(coarse, 16, axis=1), 16, axis=2)
            upsampled = tf.repeat(tf.repeat(default, 2, axis=1), 2, axis=2)
            return {"default": default, "upsampled": upsampled}

        @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 3], tf.float32, name="x")])
        def encode(self, x):
            pooled = tf.reshape(tf.nn.avg_pool2d(x, 32, 32, "VALID"), [-1, COARSE * COARSE * 3])
            z_mean = pooled @ self.enc
            return {"z_mean": z_mean, "z_sample": z_mean + 1.0, "default": z_mean}

    module = SmallBigBiGAN()
    generate = tf.function(module.generate,
                           input_signature=[tf.TensorSpec([None, LATENT_DIM], tf.float32, name=generate_input)])
    functions = {"generate": generate.get_concrete_function(), "encode": module.encode.get_concrete_function()}
    tf.saved_model.save(module, str(folder), signatures={name: functions[name] for name in signatures})
    return folder


@pytest.fixture(scope="session")
def modules(tmp_path_factory) -> dict[str, Path]:
    """Small modules, built once per session: the BigBiGAN-like one and broken variants."""
    root = tmp_path_factory.mktemp("tfhub_modules")
    weights = module_weights()
    return {
        "bigbigan": save_module(root / "bigbigan", weights),
        "retrained": save_module(root / "retrained", module_weights(seed=1)),
        "generate_only": save_module(root / "generate_only", weights, signatures=("generate",)),
        "encode_only": save_module(root / "encode_only", weights, signatures=("encode",)),
        "no_signatures": save_module(root / "no_signatures", weights, signatures=()),
        "wrong_input": save_module(root / "wrong_input", weights, signatures=("generate",), generate_input="latent"),
    }


@pytest.fixture(scope="session")
def bigbigan(modules):
    return build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"])})


class ReferenceBigBiGAN:
    """The test module's function in float64 PyTorch, NCHW: the trusted reference."""

    def __init__(self, seed: int = 0) -> None:
        self.w = {k: torch.from_numpy(v).double() for k, v in module_weights(seed).items()}

    def generate(self, z: torch.Tensor, repeat: int = 16) -> torch.Tensor:
        coarse = torch.tanh(torch.tanh(z @ self.w["w1"]) @ self.w["w2"] + self.w["b2"])
        coarse = coarse.reshape(-1, COARSE, COARSE, 3).permute(0, 3, 1, 2)
        return coarse.repeat_interleave(repeat, 2).repeat_interleave(repeat, 3)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(images, 32).permute(0, 2, 3, 1).reshape(images.shape[0], -1)
        return pooled @ self.w["enc"]


# Rounding of one float32 tanh, relative to its output range [-1, 1]: TensorFlow's vectorised tanh
# is a rational approximation good to a few ulps, not the correctly rounded value.
TANH_ERROR = 8 * UNIT_ROUNDOFF


def generate_tolerance(z: torch.Tensor) -> float:
    """Worst-case float32 error of the module's `generate` for these latents: each layer's sum of
    products (Higham's bound on the magnitudes it meets), propagated through the next layer's
    weights, plus each tanh's own rounding."""
    w = {k: v.abs() for k, v in ReferenceBigBiGAN().w.items()}
    hidden_error = float32_tolerance(LATENT_DIM, magnitude=1.0) * (z.double().abs() @ w["w1"]) + TANH_ERROR
    hidden = torch.tanh(z.double() @ ReferenceBigBiGAN().w["w1"]).abs()
    output_sums = hidden @ w["w2"] + w["b2"]
    output_error = hidden_error @ w["w2"] + float32_tolerance(HIDDEN + 1) * output_sums + TANH_ERROR
    return float(output_error.max())


def encode_tolerance(images: torch.Tensor) -> float:
    """Worst-case float32 error of the module's `encode`: a 32 x 32 average pool, then a product
    with the 192 x 120 projection (the same bound as `generate_tolerance`)."""
    pool = 32 * 32
    pooled_error = float32_tolerance(pool, magnitude=float(images.abs().max()) / pool)
    pooled = F.avg_pool2d(images.double().abs(), 32).flatten(1)
    enc = ReferenceBigBiGAN().w["enc"].abs()
    return float((pooled_error * enc.sum(dim=0) + float32_tolerance(enc.shape[0]) * (pooled @ enc)).max())


def latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, LATENT_DIM, generator=torch.Generator().manual_seed(seed))


# --- generate ---------------------------------------------------------------------------------

def test_generate_matches_the_reference_in_nchw_and_range(bigbigan):
    assert (bigbigan.latent_dim, bigbigan.resolution, bigbigan.encoder_resolution) == (120, 128, 256)
    assert bigbigan.differentiable and bigbigan.has_encoder
    z = latents(3)
    images = bigbigan.generate(z)
    assert images.shape == (3, 3, 128, 128) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    torch.testing.assert_close(images.double(), ReferenceBigBiGAN().generate(z.double()),
                               atol=generate_tolerance(z), rtol=0)


def test_upsampled_output_is_256(modules):
    generator = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"]),
                                 "options": {"output": "upsampled"}})
    z = latents(2)
    images = generator.generate(z)
    assert generator.resolution == 256 and images.shape == (2, 3, 256, 256)
    torch.testing.assert_close(images.double(), ReferenceBigBiGAN().generate(z.double(), repeat=32),
                               atol=generate_tolerance(z), rtol=0)


def test_generate_is_deterministic_and_independent_of_batch_size(bigbigan, modules):
    z = latents(5, seed=3)
    first = bigbigan.generate(z)
    assert torch.equal(first, bigbigan.generate(z))  # the same call repeated: the same bits
    small_batches = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"]),
                                     "options": {"batch_size": 2}})
    # other batch sizes may take other kernels: equal within what float32 can lose, twice over
    torch.testing.assert_close(small_batches.generate(z), first, atol=2 * generate_tolerance(z), rtol=0)
    assert small_batches.identity == bigbigan.identity


def test_identity_hashes_the_module_files(bigbigan, modules):
    assert bigbigan.identity.startswith("tfhub-bigbigan@") and len(bigbigan.weights_digest) == 16
    again = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"])})
    retrained = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["retrained"])})
    assert again.identity == bigbigan.identity
    assert retrained.identity != bigbigan.identity


def test_latents_are_checked(bigbigan):
    with pytest.raises(ValueError, match="N x 120"):
        bigbigan.generate(torch.zeros(2, 64))


# --- gradients --------------------------------------------------------------------------------

def test_gradient_matches_the_reference(bigbigan):
    z = latents(3, seed=1).requires_grad_(True)
    weight = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    (bigbigan.generate(z) * weight).sum().backward()
    z_ref = z.detach().double().requires_grad_(True)
    (ReferenceBigBiGAN().generate(z_ref) * weight.double()).sum().backward()
    assert z.grad.dtype == torch.float32 and z.grad.abs().max() > 1
    torch.testing.assert_close(z.grad.double(), z_ref.grad, atol=1e-3, rtol=1e-4)


def test_gradient_matches_finite_differences_across_batches(modules):
    """Central differences of a scalar loss along random directions, in float64 arithmetic."""
    generator = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"]),
                                 "options": {"batch_size": 2}})
    z = latents(3, seed=4)
    weight = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(5)).double()

    def loss(z_: torch.Tensor) -> torch.Tensor:
        return (generator.generate(z_).double() * weight).sum()

    z_grad = z.clone().requires_grad_(True)
    (generator.generate(z_grad) * weight.float()).sum().backward()
    step = 1e-2
    for seed in range(3):
        direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(10 + seed))
        direction /= direction.norm()
        with torch.no_grad():
            numeric = (loss(z + step * direction) - loss(z - step * direction)) / (2 * step)
        analytic = (z_grad.grad.double() * direction.double()).sum()
        assert abs(float(numeric) - float(analytic)) <= 1e-3 * abs(float(analytic)) + 1e-2, (numeric, analytic)


def test_gradient_flows_through_encode(bigbigan):
    images = (torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(6)) * 2 - 1).requires_grad_(True)
    weight = torch.randn(2, 120, generator=torch.Generator().manual_seed(7))
    (bigbigan.encode(images) * weight).sum().backward()
    reference = images.detach().double().requires_grad_(True)
    (ReferenceBigBiGAN().encode(reference) * weight.double()).sum().backward()
    torch.testing.assert_close(images.grad.double(), reference.grad, atol=1e-6, rtol=1e-4)


# --- encode -----------------------------------------------------------------------------------

def test_encode_matches_the_reference(bigbigan):
    images = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(8)) * 2 - 1
    codes = bigbigan.encode(images)
    assert codes.shape == (3, 120) and codes.dtype == torch.float32
    torch.testing.assert_close(codes.double(), ReferenceBigBiGAN().encode(images.double()),
                               atol=encode_tolerance(images), rtol=0)
    assert torch.equal(codes, bigbigan.encode(images))


def test_encode_brings_other_sizes_to_256_by_the_documented_rule(bigbigan):
    images = torch.rand(2, 3, 300, 400, generator=torch.Generator().manual_seed(9)) * 2 - 1
    squares = fit_square(images, 256)
    expected = ReferenceBigBiGAN().encode(squares.double())
    torch.testing.assert_close(bigbigan.encode(images).double(), expected, atol=encode_tolerance(squares), rtol=0)


def test_encoder_output_option(modules, bigbigan):
    sample = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"]),
                              "options": {"encoder_output": "z_sample"}})
    images = torch.zeros(1, 3, 256, 256)
    torch.testing.assert_close(sample.encode(images), bigbigan.encode(images) + 1.0)


def test_module_without_encode_generates_but_cannot_encode(modules):
    generator = build_generator({"name": "tfhub-bigbigan", "weights": str(modules["generate_only"])})
    assert not generator.has_encoder
    assert generator.generate(latents(1)).shape == (1, 3, 128, 128)
    with pytest.raises(NotImplementedError, match="no encoder"):
        generator.encode(torch.zeros(1, 3, 256, 256))


# --- errors -----------------------------------------------------------------------------------

def build(weights, **options):
    return build_generator({"name": "tfhub-bigbigan", "weights": str(weights), "options": options})


def test_missing_folder_says_how_to_use_a_download(tmp_path):
    with pytest.raises(GeneratorSpecError, match="no module folder at") as error:
        build(tmp_path / "nowhere")
    message = str(error.value)
    assert "weights: /path/to/bigbigan-module" in message and "tar -xzf" in message
    assert "tf-hub-format=compressed" in message


def test_folder_that_is_not_a_module(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(GeneratorSpecError, match="is not a TF-Hub module or SavedModel folder"):
        build(tmp_path)


def test_damaged_saved_model(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(GeneratorSpecError, match="could not be loaded as a SavedModel"):
        build(tmp_path)


def test_archive_file_is_a_clear_error(tmp_path):
    archive = tmp_path / "bigbigan.tar.gz"
    archive.write_bytes(b"")
    with pytest.raises(GeneratorSpecError, match="extract it first"):
        build(archive)


@pytest.mark.parametrize("variant, message", [
    ("no_signatures", r"has no `generate` signature \(it has none\)"),
    ("encode_only", r"has no `generate` signature \(it has \['encode'\]\)"),
    ("wrong_input", r"takes \['latent'\], expected an input named `z`"),
])
def test_module_without_the_expected_signatures(modules, variant, message):
    with pytest.raises(GeneratorSpecError, match=message):
        build(modules[variant])


@pytest.mark.parametrize("options, message", [
    ({"output": "huge"}, r"no output 'huge' \(`output` must be one of \['default', 'upsampled'\]\)"),
    ({"encoder_output": "z"}, r"no output 'z' \(`encoder_output` must be one of \['default', 'z_mean', 'z_sample'\]\)"),
    ({"batch_size": 0}, r"batch_size must be a positive integer"),
    ({"colour": 1}, r"does not accept these settings"),
])
def test_bad_options(modules, options, message):
    with pytest.raises(GeneratorSpecError, match=message):
        build(modules["bigbigan"], **options)


def test_unreachable_url_says_how_to_use_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/deepmind/bigbigan-resnet50.tar.gz"  # port 9 refuses connections
    with pytest.raises(GeneratorSpecError, match="cannot fetch the module") as error:
        build(url)
    assert "weights: /path/to/bigbigan-module" in str(error.value)
    assert f"hub.resolve('{url}')" in str(error.value)


def test_url_is_downloaded_and_has_the_folder_identity(modules, bigbigan, tmp_path, monkeypatch):
    """The URL path end to end: tensorflow_hub fetches a module archive over HTTP into its cache."""
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "bigbigan.tar.gz", "w:gz") as archive:
        for item in sorted(modules["bigbigan"].iterdir()):
            archive.add(item, arcname=item.name)
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    try:
        generator = build(f"http://127.0.0.1:{server.server_address[1]}/bigbigan.tar.gz")
    finally:
        server.shutdown()
        thread.join()
    assert generator.identity == bigbigan.identity
    assert str(generator.folder).startswith(str(tmp_path / "cache"))
    torch.testing.assert_close(generator.generate(latents(1)), bigbigan.generate(latents(1)), atol=0, rtol=0)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- TensorFlow set-up ------------------------------------------------------------------------

def test_tensorflow_is_not_imported_with_the_package():
    code = ("import sys, generator, generator.registry, generator.backends.tfhub, generator.embed, "
            "generator.embed.main, generator.image_io; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_gpu_memory_growth_is_set_on_every_gpu(monkeypatch):
    import tensorflow as tf
    calls = []
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: calls.append((gpu, on)))
    assert tfhub.import_tensorflow.__wrapped__() is tf
    assert calls == [(gpus[0], True), (gpus[1], True)]

    def already_initialised(gpu, on):
        raise RuntimeError("Physical devices cannot be modified after being initialized")
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", already_initialised)
    with pytest.warns(RuntimeWarning, match="may reserve most of the GPU memory"):
        tfhub.import_tensorflow.__wrapped__()


# --- the embed stage on this backend ----------------------------------------------------------

def test_embed_images_with_the_tfhub_encoder(modules, tmp_path):
    import yaml
    from click.testing import CliRunner
    from PIL import Image

    from generator.embed import read_bank
    from generator.embed.main import main as embed_images
    from generator.image_io import load_square

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in [("wide.jpg", (200, 300)), ("tall.png", (320, 256)), ("small.bmp", (64, 64))]:
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(photos / name)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "generator": {"name": "tfhub-bigbigan", "weights": str(modules["bigbigan"]), "options": {"batch_size": 2}},
        "embed": {"images": str(photos), "output": str(tmp_path / "bank"), "batch_size": 2}}))
    result = CliRunner().invoke(embed_images, ["--params", str(params), "--quiet"])
    assert result.exit_code == 0, result.output
    bank = read_bank(tmp_path / "bank")
    assert bank.files == ["small.bmp", "tall.png", "wide.jpg"] and bank.latents.shape == (3, 120)
    squares = torch.cat([load_square(photos / name, 256, exif_orientation=True) for name in bank.files])
    np.testing.assert_allclose(bank.latents, ReferenceBigBiGAN().encode(squares.double()).numpy(),
                               atol=encode_tolerance(squares))


def test_to_places_tensorflow_with_torch(modules):
    generator = build(modules["bigbigan"])
    assert generator._generate_call.tf_device == "/CPU:0"
    generator.to("cuda:1")  # only records the placement; nothing runs here
    assert (generator._generate_call.tf_device, generator._encode_call.tf_device) == ("/GPU:1", "/GPU:1")
    generator.to("cpu")
    assert generator._encode_call.tf_device == "/CPU:0" and generator.generate(latents(1)).device.type == "cpu"
