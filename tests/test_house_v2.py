"""The house GAN v2: networks, float16 export, photo packs, the time budget, and the one-command
GPU run exercised end to end on a CPU with tiny settings (no numpy, click or tqdm imported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from generator.embed.main import main as embed_images
from generator.house.architectures import architecture_of, build_networks, make_config
from generator.house.cli import main as train_house_gan
from generator.house.cli import pack_main
from generator.house.model import HouseConfig
from generator.house.ship import main as ship_house_gan
from generator.house.model_v2 import HouseV2Config
from generator.house.pack import PackError, evenly_spaced, load_pack, pack_photos, read_pack_index
from generator.house.training import TrainSettings, load_checkpoint, save_weights, train
from generator.image_io import load_square
from generator.interface import GeneratorSpecError, digest_file
from generator.registry import build_generator

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_V2 = HouseV2Config(latent_dim=8, resolution=16, width=2, encoder_width=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image (smooth colour ramps), so JPEG keeps it close to the original."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(rng.uniform(1, 4) * x + rng.uniform(1, 4) * y + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(channels, axis=2) + 1) * 127.5).round().astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    folder = tmp_path / "set" / "images"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(_smooth_photo(40 + 3 * i, 52 - 2 * i, i)).save(folder / f"p{i}.png")
    Image.fromarray(_smooth_photo(30, 30, 9)[:, :, 0]).save(folder / "grey.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture
def tiny_pack(tmp_path, photo_folder) -> Path:
    path = tmp_path / "pack.pt"
    pack_photos([photo_folder], path, side=128, quality=90)
    return path


def test_v2_networks_shapes_and_config_checks():
    generator, discriminator, encoder = build_networks(TINY_V2, discriminator_width=2)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1
    assert discriminator(images).shape == (3,)
    assert encoder(images).shape == (3, 8)
    assert architecture_of(TINY_V2) == "v2" and architecture_of(HouseConfig()) == "v1"
    for bad in ({"resolution": 48}, {"width": 0}, {"residual_up_to": 0}):
        with pytest.raises(ValueError):
            HouseV2Config(**bad)
    with pytest.raises(ValueError, match="unknown house architecture"):
        make_config("v9", {})
    with pytest.raises(ValueError, match="bad v2 architecture fields"):
        make_config("v2", {"colour": 3})


def test_v2_default_shape_fits_the_shipping_budget():
    generator, _, encoder = build_networks(HouseV2Config(), discriminator_width=32)
    generator.eval()
    with torch.no_grad():
        assert generator(torch.randn(2, 128)).shape == (2, 3, 128, 128)
    parameters = sum(p.numel() for net in (generator, encoder) for p in net.parameters())
    # float16 weights plus a float32 bank of 10,553 x 128 stay under 20 MB with room for the PNGs
    assert 2 * parameters + 10_553 * 128 * 4 < 15e6


def test_eval_latent_batch_norm_matches_training_formula():
    generator, _, _ = build_networks(TINY_V2, discriminator_width=2)
    for module in generator.modules():  # non-trivial statistics and z-dependent gains
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.3)
    norm = generator.blocks[0].norm1
    x, z = torch.randn(4, norm.norm.num_features, 4, 4), torch.randn(4, 8)
    norm.eval()
    folded = norm(x, z)
    reference = norm.norm(x) * (1 + norm.gain(z))[:, :, None, None] + norm.bias(z)[:, :, None, None]
    torch.testing.assert_close(folded, reference, atol=1e-5, rtol=1e-5)


def test_spectral_norm_bounds_the_weight_and_runs_under_bf16_autocast():
    from generator.house.model_v2 import SpectralNorm

    torch.manual_seed(0)
    layer = SpectralNorm(torch.nn.Conv2d(8, 16, 3, padding=1))
    before = layer.u.clone()
    layer(torch.randn(1, 8, 4, 4))
    assert torch.equal(layer.u, before), "a forward pass only reads the singular vectors"
    for _ in range(30):  # power iterations converge to the top singular vectors
        layer.power_iteration()
    top = torch.linalg.matrix_norm(layer.normalised_weight().detach().flatten(1), ord=2)
    assert abs(top.item() - 1) < 0.01
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 8, 8, 8))
    out.float().sum().backward()
    assert layer.layer.weight.grad is not None and torch.isfinite(layer.layer.weight.grad).all()


def test_gan_and_encoder_steps_run_under_bf16_autocast(tmp_path, tiny_pack, monkeypatch):
    import generator.house.training as training

    # the CUDA path's mixed precision, exercised with the CPU's bf16 autocast
    monkeypatch.setattr(training, "_autocast", lambda settings: torch.autocast("cpu", dtype=torch.bfloat16))
    settings = _v2_settings(tmp_path, tiny_pack)
    state = training.TrainingState(settings)
    photos = load_pack(tiny_pack, side=16)[0]
    for _ in range(2):
        losses = training.gan_step(state, photos, settings)
    losses.update(training.encoder_step(state, photos, settings))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())


def test_the_encoder_can_still_learn_after_a_spell_of_images_that_say_nothing_of_z():
    # Early in training G's images carry almost nothing of z, so the best guess is the mean code;
    # an encoder whose last features all fell below a ReLU's zero then stayed a constant for good.
    torch.manual_seed(0)
    encoder = build_networks(HouseV2Config(resolution=32), discriminator_width=2)[2]
    optimiser = torch.optim.Adam(encoder.parameters(), 1e-3)     # the trainer's encoder settings
    noise = torch.Generator().manual_seed(1)
    for _ in range(100):
        images = torch.rand(16, 3, 32, 32, generator=noise) * 2 - 1
        loss = torch.nn.functional.mse_loss(encoder(images), torch.randn(16, 128, generator=noise))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    images = torch.rand(16, 3, 32, 32, generator=noise) * 2 - 1
    codes = encoder(images)
    assert codes.detach().std(dim=0).mean() > 1e-4            # codes still depend on the image
    optimiser.zero_grad()
    torch.nn.functional.mse_loss(codes, torch.randn(16, 128, generator=noise)).backward()
    first_layer = next(encoder.features.parameters())
    assert first_layer.grad.abs().sum() > 0                    # and a gradient still reaches the pixels' layer


def test_float16_export_loads_as_float32(tmp_path):
    generator, _, encoder = build_networks(HouseV2Config(latent_dim=8, resolution=32, width=2, encoder_width=2), 2)
    generator.eval()
    path = tmp_path / "house_gan.pt"
    save_weights(generator, encoder, {"steps": 0}, path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format_version"] == 2 and payload["architecture"] == "v2"
    assert all(v.dtype == torch.float16 for v in payload["generator"].values() if v.is_floating_point())
    house = build_generator({"name": "house", "weights": str(path)})
    assert house.architecture == "v2" and house.resolution == 32 and house.encoder_resolution == 32
    assert all(p.dtype == torch.float32 for p in house.generator_net.parameters())
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = generator.half().float()(z)  # the weights as float16 holds them
        torch.testing.assert_close(house.generate(z), expected, atol=1e-5, rtol=1e-4)
    foreign = tmp_path / "foreign.pt"
    torch.save({**payload, "architecture": "v9"}, foreign)
    with pytest.raises(GeneratorSpecError, match="unknown house architecture"):
        build_generator({"name": "house", "weights": str(foreign)})


def test_pack_round_trip_and_subsets(tmp_path, photo_folder, tiny_pack):
    index = read_pack_index(tiny_pack)
    assert index["side"] == 128 and index["quality"] == 90
    assert index["names"] == [f"set/images/{n}" for n in ["grey.jpg", "p0.png", "p1.png", "p2.png", "p3.png",
                                                          "p4.png", "p5.png"]]
    assert [s["path"] for s in index["skipped"]] == ["set/images/broken.jpg"]
    photos, names = load_pack(tiny_pack)
    assert photos.shape == (7, 3, 128, 128) and photos.dtype == torch.uint8 and names == index["names"]
    # the packed crop is the project's crop of the original, up to JPEG's loss
    original = ((load_square(photo_folder / "p3.png", 128)[0] + 1) * 127.5)
    assert (photos[names.index("set/images/p3.png")].float() - original).abs().mean() < 3
    assert photos[0][0].equal(photos[0][1]), "a grey photo packs as three equal channels"
    small, _ = load_pack(tiny_pack, side=32, limit=3)
    assert small.shape == (3, 3, 32, 32) and small.dtype == torch.uint8
    assert evenly_spaced(7, 3) == [0, 2, 4] and evenly_spaced(3, 10) == [0, 1, 2]
    subset = tmp_path / "subset.pt"
    # files 0 and 4 of 8 (sorted: broken.jpg, grey.jpg, p0 .. p5); the broken one is recorded, not packed
    summary = pack_photos([photo_folder], subset, side=16, quality=50, max_photos=2)
    assert (summary["count"], summary["skipped"]) == (1, 1)
    assert read_pack_index(subset)["names"] == ["set/images/p2.png"]


def test_pack_is_reproducible_and_refuses_bad_input(tmp_path, photo_folder, tiny_pack):
    again = tmp_path / "again.pt"
    pack_photos([photo_folder], again, side=128, quality=90)
    assert read_pack_index(again)["jpeg"].equal(read_pack_index(tiny_pack)["jpeg"])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a pack")
    with pytest.raises(PackError, match="not a photo pack"):
        load_pack(garbage)
    torch.save({"format": "something else"}, garbage)
    with pytest.raises(PackError, match="not a photo pack"):
        load_pack(garbage)
    with pytest.raises(ValueError, match="quality"):
        pack_photos([photo_folder], tmp_path / "q.pt", quality=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no readable photos"):
        pack_photos([empty], tmp_path / "e.pt")


def test_pack_command(tmp_path, photo_folder):
    out = tmp_path / "cli_pack.pt"
    result = CliRunner().invoke(pack_main, ["--photos", str(photo_folder), "--out", str(out), "--side", "16"])
    assert result.exit_code == 0, result.output
    assert "7 photos (1 unreadable skipped)" in result.output
    assert load_pack(out)[0].shape == (7, 3, 16, 16)


def _v2_settings(tmp_path, data, **overrides) -> TrainSettings:
    values = dict(data=data, out=tmp_path / "run", export_to=tmp_path / "export", steps=3, encoder_steps=2,
                  batch_size=4, seed=3, checkpoint_every=2, export_every=0, config=TINY_V2, discriminator_width=2,
                  adam_betas=(0.0, 0.9), calibration_images=16)
    values.update(overrides)
    return TrainSettings(**values)


def test_v2_trains_from_a_folder_with_bank_and_from_a_pack(tmp_path, photo_folder, tiny_pack):
    weights = train(_v2_settings(tmp_path / "folder", photo_folder))
    house = build_generator({"name": "house", "weights": str(weights)})
    assert house.architecture == "v2" and house.bundled_latent_bank is not None
    bank = np.load(house.bundled_latent_bank, allow_pickle=False)
    assert bank.shape == (7, 8) and np.isfinite(bank).all()
    log = [json.loads(line) for line in (tmp_path / "folder" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log] == ["gan", "encoder"]
    assert all(e["steps_per_second"] > 0 and e["images_per_second"] > 0 for e in log)
    recorded = json.loads((tmp_path / "folder" / "run" / "settings.json").read_text())
    assert recorded["architecture"] == "v2" and recorded["config"]["width"] == 2 and recorded["photos"] == 7

    from_pack = train(_v2_settings(tmp_path / "pack", tiny_pack, bank=True))
    assert from_pack.is_file() and not (from_pack.parent / "latent_bank.npy").exists()  # a pack has no files
    # 7 photos and their 7 reconstructions, 8 to a row
    assert Image.open(from_pack.parent / "reconstructions.png").size == (8 * 18 + 2, 2 * 18 + 2)


def test_time_budget_stops_both_phases_and_still_exports(tmp_path, tiny_pack, monkeypatch):
    ticks = iter(range(10 ** 6))  # a clock that moves one second each time it is read: no flaky timing
    monkeypatch.setattr("generator.house.training.time.monotonic", lambda: float(next(ticks)))
    settings = _v2_settings(tmp_path, tiny_pack, steps=10 ** 6, encoder_steps=10 ** 6, time_budget_seconds=20,
                            export_reserve_seconds=2, encoder_share=0.5, log_every=10 ** 6)
    weights = train(settings, photos=(load_pack(tiny_pack, side=16)[0], [], []))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", settings)
    assert 0 < state.step < 10 ** 6 and 0 < state.encoder_step < 10 ** 6
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log] == ["gan", "encoder"]  # the last step of each phase is logged
    assert weights.is_file()


def test_v2_checkpoint_is_not_resumed_as_v1(tmp_path, tiny_pack):
    train(_v2_settings(tmp_path, tiny_pack, steps=1, encoder_steps=0))
    v1 = _v2_settings(tmp_path, tiny_pack, config=HouseConfig(latent_dim=8, resolution=16, width=2),
                      adam_betas=(0.5, 0.999))
    with pytest.raises(ValueError, match="architecture"):
        train(v1, resume=tmp_path / "run" / "checkpoint.pt")


def test_train_command_v2_on_a_pack_at_a_smaller_side(tmp_path, tiny_pack):
    result = CliRunner().invoke(train_house_gan, [
        "--data", str(tiny_pack), "--arch", "v2", "--resolution", "16", "--out", str(tmp_path / "cli"),
        "--steps", "2", "--encoder-steps", "1", "--batch-size", "4", "--width", "2", "--encoder-width", "2",
        "--latent-dim", "8", "--discriminator-width", "2", "--calibration-images", "8", "--device", "cpu",
        "--minutes", "5", "--threads", "1"])
    assert result.exit_code == 0, result.output
    house = build_generator({"name": "house", "weights": str(tmp_path / "cli" / "house_gan.pt")})
    assert house.architecture == "v2" and house.resolution == 16
    result = CliRunner().invoke(train_house_gan, ["--data", str(tiny_pack), "--encoder-width", "4"])
    assert result.exit_code != 0 and "only v2" in result.output


@pytest.fixture(scope="module")
def gpu_run_output(tmp_path_factory) -> Path:
    """The device command (gpu_train.sh), run once on the CPU with tiny settings, from a folder
    that holds only the pack, with numpy, click and tqdm made unimportable."""
    root = tmp_path_factory.mktemp("gpu_run")
    folder = root / "set" / "images"
    folder.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(_smooth_photo(130, 150, i)).save(folder / f"p{i}.png")
    machine = root / "machine"
    (machine / "data").mkdir(parents=True)
    pack_photos([folder], machine / "data" / "house_photos_128.pt", side=128, quality=80)
    hide = root / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nfor name in ('numpy', 'click', 'tqdm'):\n"
                                           "    sys.modules[name] = None\n")
    command = ["bash", str(REPO_ROOT / "generator/house/gpu_train.sh"), str(root / "out"),
               "--work", str(root / "work"), "--device", "cpu", "--minutes", "2", "--export-reserve", "5",
               "--steps", "3", "--encoder-steps", "2", "--batch-size", "4", "--width", "2", "--encoder-width", "2",
               "--discriminator-width", "2", "--latent-dim", "8", "--calibration-images", "8", "--log-every", "1",
               "--limit", "6"]
    env = {"PYTHONPATH": f"{hide}:{REPO_ROOT}", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    done = subprocess.run(command, cwd=machine, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "out"


def test_gpu_run_writes_everything_that_comes_back(gpu_run_output):
    names = {p.name for p in gpu_run_output.iterdir()}
    assert names == {"house_gan.pt", "samples.png", "reconstructions.png", "train_log.jsonl", "settings.json",
                     "timing.json", "console.log"}
    assert "gan: 3 steps" in (gpu_run_output / "console.log").read_text()
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in gpu_run_output.iterdir())
    timing = json.loads((gpu_run_output / "timing.json").read_text())
    assert timing["photos"] == 6 and timing["environment"]["numpy"] is None
    assert timing["phases"]["gan"]["steps"] == 3 and timing["phases"]["encoder"]["steps"] == 2
    assert timing["phases"]["gan"]["images_per_second_median"] > 0
    assert 0 <= timing["setup_seconds"] <= timing["total_seconds"] <= timing["budget_seconds"]
    log = [json.loads(line) for line in (gpu_run_output / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["phase"] == "gan"] == [1, 2, 3]
    assert Image.open(gpu_run_output / "samples.png").size == (8 * 130 + 2, 8 * 130 + 2)


def test_gpu_run_weights_load_safely_and_generate_128(gpu_run_output, tmp_path):
    weights = gpu_run_output / "house_gan.pt"
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    assert payload["architecture"] == "v2" and payload["config"]["resolution"] == 128
    house = build_generator({"name": "house", "weights": str(weights)})
    assert house.identity == f"house@{digest_file(weights)}"
    with torch.no_grad():
        images = house.generate(torch.randn(5, house.latent_dim, generator=torch.Generator().manual_seed(0)))
        codes = house.encode(images)
    assert images.shape == (5, 3, 128, 128) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert codes.shape == (5, house.latent_dim) and torch.isfinite(codes).all()


def test_embed_images_encodes_at_128_with_v2_weights(gpu_run_output, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(_smooth_photo(140, 170, i)).save(photos / f"x{i}.jpg")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "generator": {"name": "house", "weights": str(gpu_run_output / "house_gan.pt")},
        "embed": {"images": str(photos), "output": str(tmp_path / "bank"), "device": "cpu", "workers": 1}}))
    result = CliRunner().invoke(embed_images, ["--params", str(params), "--quiet"])
    assert result.exit_code == 0, result.output
    bank = np.load(tmp_path / "bank" / "latents.npy", allow_pickle=False)
    assert bank.shape == (3, 8)
    house = build_generator({"name": "house", "weights": str(gpu_run_output / "house_gan.pt")})
    with torch.no_grad():
        expected = house.encode(load_square(photos / "x1.jpg", 128))
    np.testing.assert_allclose(bank[1], expected[0].numpy(), atol=1e-4)


def test_ship_makes_a_run_the_package_generator_with_its_bank_and_record(gpu_run_output, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(_smooth_photo(140, 170, i)).save(photos / f"x{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a photo")
    into = tmp_path / "package"
    into.mkdir()
    (into / "MODEL_CARD.md").write_text("# House\n\nHand-written architecture notes.\n")
    result = CliRunner().invoke(ship_house_gan, [str(gpu_run_output), "--photos", str(photos), "--into", str(into)])
    assert result.exit_code == 0, result.output
    house = build_generator({"name": "house", "weights": str(into / "house_gan.pt")})
    assert house.identity == f"house@{digest_file(gpu_run_output / 'house_gan.pt')}"
    assert house.bundled_latent_bank == into / "latent_bank.npy"       # its index names these weights
    bank = np.load(into / "latent_bank.npy", allow_pickle=False)
    assert bank.shape == (3, 8)
    with torch.no_grad():
        expected = house.encode(load_square(photos / "x1.jpg", 128))
    np.testing.assert_allclose(bank[1], expected[0].numpy(), atol=1e-4)
    card = (into / "MODEL_CARD.md").read_text()
    assert card.startswith("# House\n\nHand-written") and "| GAN steps / encoder steps | 3 / 2 at batch 4" in card
    record = json.loads((into / "TRAINING_RECORD.json").read_text())
    assert record["bank"] == {"count": 3, "skipped": 1, "photos": str(photos)} and record["timing"]["photos"] == 6
    # shipping again replaces the record section instead of adding a second one
    assert CliRunner().invoke(ship_house_gan, [str(gpu_run_output), "--photos", str(photos),
                                               "--into", str(into)]).exit_code == 0
    assert (into / "MODEL_CARD.md").read_text().count("## Training record") == 1


def test_ship_refuses_an_unfinished_run_and_a_budget_overrun_leaving_the_package_alone(gpu_run_output, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_smooth_photo(140, 170, 0)).save(photos / "x0.jpg")
    into = tmp_path / "package"
    result = CliRunner().invoke(ship_house_gan, [str(gpu_run_output), "--photos", str(photos), "--into", str(into),
                                                 "--max-mib", "0.01"])
    assert result.exit_code == 1 and "over --max-mib 0.01" in result.output and not into.exists()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "house_gan.pt").write_bytes((gpu_run_output / "house_gan.pt").read_bytes())
    result = CliRunner().invoke(ship_house_gan, [str(partial), "--photos", str(photos), "--into", str(into)])
    assert result.exit_code == 1 and "samples.png" in result.output and "missing" in result.output


def test_gpu_run_tries_plain_settings_after_a_failure_and_reports_both(tmp_path, tiny_pack):
    from generator.house.gpu_run import main as gpu_run

    with pytest.raises(SystemExit, match="training failed"):
        gpu_run(["--pack", str(tiny_pack), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                 "--device", "cpu", "--minutes", "2", "--export-reserve", "5", "--limit", "2", "--batch-size", "2",
                 "--lr-generator", "-1"])  # Adam refuses a negative learning rate in every attempt
    errors = (tmp_path / "out" / "errors.txt").read_text()
    assert "attempt 1 (bf16 True, compile False)" in errors and "attempt 2 (bf16 False, compile False)" in errors
    assert "Invalid learning rate" in errors


def test_gpu_train_script_says_what_is_missing(tmp_path):
    script = str(REPO_ROOT / "generator/house/gpu_train.sh")
    done = subprocess.run(["bash", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(["bash", script, str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 4 and "house_photos_128.pt is missing" in done.stderr


def test_gpu_run_trains_the_layered_design_too(tmp_path, tiny_pack, capsys):
    from generator.house.gpu_run import main as gpu_run

    common = ["--pack", str(tiny_pack), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
              "--device", "cpu", "--architecture", "layered"]
    with pytest.raises(SystemExit) as refused:
        gpu_run([*common, "--encoder-width", "4"])
    assert refused.value.code == 2 and "--encoder-width is v2's only" in capsys.readouterr().err
    gpu_run([*common, "--minutes", "2", "--export-reserve", "5", "--steps", "2", "--encoder-steps", "1",
             "--batch-size", "2", "--resolution", "32", "--width", "2", "--discriminator-width", "2",
             "--latent-dim", "40", "--calibration-images", "4", "--limit", "4"])
    house = build_generator({"name": "house", "weights": str(tmp_path / "out" / "house_gan.pt")})
    assert house.architecture == "layered" and house.resolution == 32 and house.config.width == 2
    assert "training layered" in capsys.readouterr().out
