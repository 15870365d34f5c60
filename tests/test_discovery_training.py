"""Direction models, reconstructor and the training loops: shapes, losses, checkpoints, exact resume."""

import pytest
import torch

from generator.backends.testing import ShapesGenerator
from generator.discovery.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
from generator.discovery.config import LatentDiscoveryConfig, SingleDirectionConfig
from generator.discovery.directions import LatentDirections
from generator.discovery.latent_discovery import discover_latent_directions, draw_step
from generator.discovery.reconstructor import Reconstructor
from generator.discovery.single_direction import discover_single_direction, radial_map, sobel_magnitude


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL_LATENT = LatentDiscoveryConfig(directions=4, steps=6, batch_size=4, reconstructor_width=4,
                                     reconstructor_input_size=16, reconstructor_depth=2, checkpoint_every=2)
SMALL_SINGLE = SingleDirectionConfig(steps=6, batch_size=4, checkpoint_every=2)


@pytest.fixture
def small_generator():
    return ShapesGenerator(latent_dim=16, resolution=16, mixing_seed=3)


def test_orthonormal_directions_stay_orthonormal_after_updates():
    directions = LatentDirections(16, 6, "orthonormal", generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.Adam(directions.parameters(), lr=0.1)
    for _ in range(5):
        optimiser.zero_grad()
        directions.matrix()[:3].sum().backward()
        optimiser.step()
    a = directions.matrix()
    assert torch.allclose(a.t() @ a, torch.eye(6), atol=1e-5)


def test_shift_is_eps_times_the_chosen_column():
    directions = LatentDirections(8, 3, "plain", generator=torch.Generator().manual_seed(0))
    shift = directions.shift(torch.tensor([2, 0]), torch.tensor([1.5, -2.0]))
    a = directions.matrix()
    assert torch.allclose(shift, torch.stack([1.5 * a[:, 2], -2.0 * a[:, 0]]))
    assert torch.allclose(directions.unit_matrix().norm(dim=0), torch.ones(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(latent_dim=4, count=5, direction_type="orthonormal"), "do not fit"),
    (dict(latent_dim=4, count=2, direction_type="skew"), "direction_type"),
    (dict(latent_dim=4, count=0), "at least one"),
])
def test_bad_direction_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentDirections(**kwargs)


def test_reconstructor_reads_a_pair_of_any_size():
    reconstructor = Reconstructor(count=5, width=4, input_size=16, depth=2)
    logits, shift = reconstructor(torch.zeros(3, 3, 40, 40), torch.zeros(3, 3, 40, 40))
    assert logits.shape == (3, 5) and shift.shape == (3,)


def test_shifts_are_uniform_with_a_minimum_size():
    config = LatentDiscoveryConfig(directions=7, batch_size=4000)
    z, index, eps = draw_step(config, 16, seed=0, t=0)
    assert z.shape == (4000, 16) and set(index.tolist()) == set(range(7))
    assert eps.abs().min() >= 0.5 and eps.abs().max() <= 6.0
    assert 0.45 < (eps > 0).float().mean() < 0.55
    assert abs(eps.abs().mean().item() - 3.25) < 0.1  # uniform on [0.5, 6]
    assert torch.equal(draw_step(config, 16, 0, 5)[2], draw_step(config, 16, 0, 5)[2])
    assert not torch.equal(draw_step(config, 16, 0, 5)[2], draw_step(config, 16, 0, 6)[2])


def test_latent_discovery_learns_and_reports(small_generator):
    result = discover_latent_directions(small_generator, SMALL_LATENT.__class__(
        **{**SMALL_LATENT.__dict__, "steps": 30, "lr_directions": 1e-2, "lr_reconstructor": 1e-2}), progress=False)
    history = result.outcome.history
    assert result.candidates.shape == (16, 4)
    assert torch.allclose(result.candidates.norm(dim=0), torch.ones(4), atol=1e-5)
    assert set(history) == {"loss", "index_loss", "shift_loss", "accuracy"} and len(history["loss"]) == 30
    assert sum(history["loss"][-10:]) < sum(history["loss"][:10])


def test_latent_discovery_leaves_the_generator_frozen():
    from generator.backends.torch_module import TorchModuleGenerator
    from tests.fixtures.user_generators import TinyLinearGenerator
    module = TinyLinearGenerator()
    generator = TorchModuleGenerator(module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    discover_latent_directions(generator, LatentDiscoveryConfig(
        directions=2, steps=3, batch_size=2, reconstructor_width=2, reconstructor_input_size=8,
        reconstructor_depth=1, checkpoint_every=0), progress=False)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in module.parameters())


def _run(method, generator, config, path):
    if method == "latent":
        return discover_latent_directions(generator, config, seed=5, checkpoint_path=path, progress=False)
    return discover_single_direction(generator, config, seed=5, checkpoint_path=path, progress=False)


@pytest.mark.parametrize("method, config", [("latent", SMALL_LATENT), ("single", SMALL_SINGLE)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, small_generator, method, config):
    whole = _run(method, small_generator, config, tmp_path / "whole.pt")
    first = _run(method, small_generator, config.__class__(**{**config.__dict__, "steps": 3}), tmp_path / "part.pt")
    assert first.outcome.steps_run == 3
    resumed = _run(method, small_generator, config, tmp_path / "part.pt")
    assert resumed.outcome.resumed_from == 3 and resumed.outcome.steps_run == 3
    assert torch.equal(resumed.candidates, whole.candidates)
    assert resumed.outcome.history == whole.outcome.history
    saved_whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    saved_resumed = torch.load(tmp_path / "part.pt", weights_only=True)
    assert_same(saved_whole["modules"], saved_resumed["modules"])
    assert_same(saved_whole["optimisers"], saved_resumed["optimisers"])


def assert_same(a, b, where="state"):
    """Nested dicts/lists of tensors and numbers are exactly equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class CrashingGenerator(ShapesGenerator):
    """Raises on the n-th render, as a killed job would stop."""

    def __init__(self, crash_at, **kwargs):
        super().__init__(**kwargs)
        self.calls, self.crash_at = 0, crash_at

    def _generate(self, z):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return super()._generate(z)


def test_crash_mid_run_resumes_from_the_last_checkpoint(tmp_path):
    kwargs = dict(latent_dim=16, resolution=16, mixing_seed=3)
    whole = _run("latent", ShapesGenerator(**kwargs), SMALL_LATENT, None)
    crashing = CrashingGenerator(crash_at=2 * 5 + 1, **kwargs)  # two renders per step: dies in step 5
    with pytest.raises(KeyboardInterrupt):
        _run("latent", crashing, SMALL_LATENT, tmp_path / "ck.pt")
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["step"] == 4
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = _run("latent", ShapesGenerator(**kwargs), SMALL_LATENT, tmp_path / "ck.pt")
    assert resumed.outcome.resumed_from == 4
    assert torch.equal(resumed.candidates, whole.candidates)


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path, small_generator):
    _run("latent", small_generator, SMALL_LATENT, tmp_path / "ck.pt")
    other = SMALL_LATENT.__class__(**{**SMALL_LATENT.__dict__, "lr_directions": 0.5})
    result = discover_latent_directions(small_generator, other, seed=5, checkpoint_path=tmp_path / "ck.pt",
                                        progress=False)
    assert result.outcome.resumed_from == 0 and result.outcome.steps_run == SMALL_LATENT.steps
    with pytest.raises(CheckpointMismatch, match="other settings"):
        load_checkpoint(tmp_path / "ck.pt", "not-this-run")


def test_checkpoint_is_atomic_and_refuses_pickled_objects(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"fingerprint": "f", "step": 1, "modules": {}, "optimisers": {},
                                         "history": {}})
    assert load_checkpoint(tmp_path / "ck.pt", "f")["step"] == 1
    save_checkpoint(tmp_path / "old.pt", {"fingerprint": "f", "step": 1, "modules": {}, "optimisers": {}})
    with pytest.raises(CheckpointMismatch, match="not a discovery checkpoint: it lacks history"):
        load_checkpoint(tmp_path / "old.pt", "f")
    assert load_checkpoint(tmp_path / "missing.pt", "f") is None
    torch.save({"fingerprint": "f", "payload": CheckpointMismatch("x")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointMismatch, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt", "f")
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointMismatch, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt", "f")


def test_radial_map_is_balanced_and_signed():
    c = radial_map(32, 0.5)
    assert abs(c.sum().item()) < 1e-4 and abs(c.abs().mean().item() - 1) < 1e-5
    assert c[16, 16] < 0 and c[0, 0] > 0


def test_sobel_sees_an_edge_and_not_a_flat_image():
    flat = torch.zeros(1, 8, 8)
    step = torch.zeros(1, 8, 8)
    step[:, :, 4:] = 1
    assert sobel_magnitude(flat).max() < 1e-3
    assert sobel_magnitude(step)[0, 4, 3:5].min() > 0.4 and sobel_magnitude(step)[0, 4, 0] < 1e-3


def test_single_direction_stays_unit_and_lowers_its_loss(small_generator):
    config = SingleDirectionConfig(steps=40, batch_size=8, checkpoint_every=0)
    result = discover_single_direction(small_generator, config, progress=False)
    assert result.candidates.shape == (16, 1)
    assert abs(result.candidates.norm().item() - 1) < 1e-5
    loss = result.outcome.history["loss"]
    assert sum(loss[-10:]) < sum(loss[:10])


def test_a_generator_without_gradients_is_refused():
    generator = ShapesGenerator(resolution=16)
    generator.differentiable = False
    with pytest.raises(ValueError, match="not differentiable"):
        discover_latent_directions(generator, SMALL_LATENT, progress=False)
    with pytest.raises(ValueError, match="not differentiable"):
        discover_single_direction(generator, SMALL_SINGLE, progress=False)
