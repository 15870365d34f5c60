"""Latent samplers, the latent bank reader, the tar writer and the settings: unit tests."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from generator.synth.samplers import (
    CandidateStreams, GaussianSampler, LatentBankError, NeighbourhoodSampler, candidate_rng, candidate_key,
    load_latent_bank)
from generator.synth.settings import SettingsError, SynthSettings
from generator.synth.writer import ShardWriter, encode_jpeg, encode_mask_png, sample_key


def test_candidates_are_a_function_of_seed_shard_and_counter_only():
    sampler = GaussianSampler(8)
    whole = sampler.sample(seed=3, shard=5, counters=np.arange(40)).z
    pieces = np.concatenate([sampler.sample(3, 5, np.arange(a, b)).z for a, b in [(0, 7), (7, 8), (8, 40)]])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(sampler.sample(3, 5, np.array([17, 2])).z, whole[[17, 2]])
    assert not np.array_equal(sampler.sample(4, 5, np.arange(40)).z, whole)     # another seed
    assert not np.array_equal(sampler.sample(3, 6, np.arange(40)).z, whole)     # another shard
    assert len({row.tobytes() for row in whole}) == 40


def test_gaussian_sampler_draws_standard_normals():
    z = GaussianSampler(16).sample(0, 0, np.arange(2000)).z
    assert z.dtype == np.float32 and z.shape == (2000, 16)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_neighbourhood_sampler_adds_alpha_noise_around_bank_rows():
    bank = np.arange(5 * 4, dtype=np.float32).reshape(5, 4) * 10
    counters = np.arange(3000)
    batch = NeighbourhoodSampler(bank, alpha=0.2).sample(1, 2, counters)
    assert batch.source_index.min() == 0 and batch.source_index.max() == 4
    assert np.bincount(batch.source_index).min() > 500          # uniform over the rows
    noise = batch.z - bank[batch.source_index]
    assert abs(noise.std() - 0.2) < 0.01 and abs(noise.mean()) < 0.01
    exact = NeighbourhoodSampler(bank, alpha=0.0).sample(1, 2, counters)
    assert np.array_equal(exact.z, bank[exact.source_index])
    assert np.array_equal(exact.source_index, batch.source_index)   # same stream, same rows


def test_candidate_streams_are_far_apart():
    key = candidate_key(0, 0)
    a = candidate_rng(key, 0).standard_normal(1000)
    b = candidate_rng(key, 1).standard_normal(1000)
    assert not np.intersect1d(a, b).size
    with pytest.raises(ValueError, match="non-negative"):
        candidate_key(-1, 0)


def test_reused_streams_draw_exactly_what_fresh_ones_do():
    """The samplers reset one generator per candidate; the numbers must be those of a fresh
    `candidate_rng`, whatever the previous candidate left buffered (an odd number of 32-bit
    draws leaves half a 64-bit word behind)."""
    key = candidate_key(7, 3)
    streams = CandidateStreams(key)
    for counter in [5, 0, 2 ** 40, 5, 1, 2 ** 62]:
        for draw in (lambda rng: rng.standard_normal(3, dtype=np.float32),      # leaves a half word
                     lambda rng: (rng.integers(10_553), rng.standard_normal(129, dtype=np.float32)),
                     lambda rng: rng.random(5)):
            fresh, reused = draw(candidate_rng(key, counter)), draw(streams.at(counter))
            assert np.array_equal(np.hstack(fresh), np.hstack(reused)), counter


def test_samplers_draw_the_latents_of_fresh_candidate_streams():
    counters = np.array([0, 1, 2, 90, 3, 2 ** 33])
    key = candidate_key(11, 4)
    gaussian = GaussianSampler(16).sample(11, 4, counters).z
    assert np.array_equal(gaussian, np.stack([candidate_rng(key, c).standard_normal(16, dtype=np.float32)
                                              for c in counters]))
    bank = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    batch = NeighbourhoodSampler(bank, alpha=0.3).sample(11, 4, counters)
    for row, counter in enumerate(counters):
        rng = candidate_rng(key, counter)
        source = rng.integers(50)
        assert batch.source_index[row] == source
        expected = bank[source] + np.float32(0.3) * rng.standard_normal(16, dtype=np.float32)
        assert np.array_equal(batch.z[row], expected)


def test_bank_reader_checks_shape_size_and_content(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 16), np.float32))
    assert load_latent_bank(good, 16).shape == (3, 16)
    cases = {
        "wide.npy": (np.ones((3, 20), np.float32), "latents of size 20, but the generator's latent size is 16"),
        "empty.npy": (np.ones((0, 16), np.float32), "empty"),
        "flat.npy": (np.ones(16, np.float32), "2-D float array"),
        "ints.npy": (np.ones((3, 16), np.int64), "2-D float array"),
        "nan.npy": (np.full((3, 16), np.nan, np.float32), "NaN"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(LatentBankError, match=message):
            load_latent_bank(tmp_path / name, 16)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LatentBankError, match="not a .npy array"):       # never unpickled
        load_latent_bank(tmp_path / "objects.npy", 16)
    with pytest.raises(LatentBankError, match="not found .*dvc repro embed"):
        load_latent_bank(tmp_path / "missing.npy", 16)
    with pytest.raises(ValueError, match="alpha"):
        NeighbourhoodSampler(np.ones((3, 16), np.float32), alpha=-0.1)


def test_writer_is_deterministic_and_renames_only_when_complete(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:9, 3:12] = True
    digests = []
    for name in ("a.tar", "b.tar"):
        with ShardWriter(tmp_path / name) as writer:
            writer.add_sample(sample_key(3, 7), {"jpg": encode_jpeg(image, 90), "mask.png": encode_mask_png(mask),
                                                 "json": b"{}\n"})
            assert writer.tmp.is_file() and writer.tmp.name.startswith(f".{name}.") and not (tmp_path / name).exists()
            digests.append(writer.close())
    assert digests[0] == digests[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]       # no temporary left
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["000003_000007.jpg", "000003_000007.mask.png", "000003_000007.json"]
        assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}
        png = Image.open(io.BytesIO(tar.extractfile(members[1]).read()))
        assert png.mode == "L" and np.array_equal(np.asarray(png), mask * np.uint8(255))


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s.tar") as writer:
            writer.add("x.json", b"{}")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_settings_from_params_validate_and_plan_shards():
    settings = SynthSettings.from_params({"n": 1050, "shard_size": 500, "filters": {"size": {"enabled": False}}})
    assert settings.shard_plan() == [(0, 500), (1, 500), (2, 50)]
    assert settings.filters.size is False
    assert SynthSettings().override(n=1000, alpha=None).n == 1000
    assert json.dumps(settings.data_parameters())            # plain JSON
    with pytest.raises(SettingsError, match="unknown settings in the synth section: colour"):
        SynthSettings.from_params({"colour": 1})
    with pytest.raises(SettingsError, match="n must be a positive integer.*alpha must be a finite number"):
        SynthSettings.from_params({"n": 0, "alpha": float("nan")})
    with pytest.raises(SettingsError, match="alpha"):
        SynthSettings.from_params({"alpha": "0.2x"})
    with pytest.raises(SettingsError, match="synth.filters"):
        SynthSettings.from_params({"filters": {"histogram": {"rule": "other"}}})


def test_a_bank_encoded_by_another_generator_is_refused(tmp_path):
    import json

    from generator.synth.samplers import LatentBankError, load_latent_bank
    np.save(tmp_path / "latents.npy", np.zeros((3, 16), np.float32))
    (tmp_path / "index.json").write_text(json.dumps(
        {"format_version": 1, "generator": "other@0123456789abcdef", "count": 3, "files": [], "skipped": []}))
    with pytest.raises(LatentBankError, match="encoded by other@0123456789abcdef, not by testing@"):
        load_latent_bank(tmp_path / "latents.npy", 16, "testing@fedcba9876543210")
    assert load_latent_bank(tmp_path / "latents.npy", 16, "other@0123456789abcdef").shape == (3, 16)


@pytest.mark.parametrize("index, message", [
    ({"format_version": 1, "generator": "testing@fedcba9876543210", "count": 5}, "counts 5 rows, .* holds 3"),
    ({"generator": "testing@fedcba9876543210", "count": 3}, "unsupported bank index"),
    ([1, 2], "unsupported bank index"),
])
def test_a_bank_index_is_checked_as_the_embed_stage_checks_it(tmp_path, index, message):
    from generator.synth.samplers import LatentBankError, load_latent_bank
    np.save(tmp_path / "latents.npy", np.zeros((3, 16), np.float32))
    (tmp_path / "index.json").write_text(json.dumps(index))
    for identity in ("testing@fedcba9876543210", None):
        with pytest.raises(LatentBankError, match=message):
            load_latent_bank(tmp_path / "latents.npy", 16, identity)
