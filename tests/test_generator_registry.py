"""The registry: specs from params.yaml into generators, and clear errors for bad specs."""

import pytest
import torch
from click.testing import CliRunner

from generator import Generator, GeneratorSpecError, available_generators, build_generator
from generator.registry import command_spec
from generator.backends.testing import ShapesGenerator
from generator.backends.torch_module import TorchModuleGenerator
from generator.info import main as gen_info

USER = "python:tests.fixtures.user_generators"


def test_builtin_by_name_and_by_mapping():
    assert "testing" in available_generators()
    assert isinstance(build_generator("testing"), ShapesGenerator)
    generator = build_generator({"name": "testing", "weights": None, "options": {"resolution": 24}})
    assert generator.resolution == 24


def test_user_module_factory_is_wrapped():
    generator = build_generator({"name": f"{USER}:tiny_linear", "options": {"seed": 3}})
    assert isinstance(generator, TorchModuleGenerator)
    assert generator.identity.startswith("tests.fixtures.user_generators:tiny_linear@")
    assert generator.generate(torch.zeros(2, 4)).shape == (2, 3, 8, 8)


def test_user_module_encoder_attribute_enables_encode():
    generator = build_generator(f"{USER}:with_encoder")
    assert generator.has_encoder
    assert generator.encode(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_user_factory_returning_a_generator_is_used_as_is():
    generator = build_generator({"name": f"{USER}:ready_generator", "options": {"resolution": 16}})
    assert isinstance(generator, Generator) and generator.resolution == 16


@pytest.mark.parametrize("spec, message", [
    ("no-such-generator", r"unknown generator 'no-such-generator'; built-in generators are .*testing"),
    ("python:no_such_package.gen:make", r"no module named 'no_such_package.gen'"),
    (f"{USER}:missing_factory", r"has no attribute 'missing_factory'"),
    (f"{USER}:NOT_CALLABLE", r"is not callable"),
    (f"{USER}:returns_a_string", r"returned str, expected a generator.Generator"),
    (f"{USER}:module_without_latent_dim", r"latent_dim"),
    ("python:tests.fixtures.user_generators", r"expected 'python:package.module:factory'"),
    ({"name": "testing", "options": {"colour": 1}}, r"does not accept these settings"),
    ({"name": "testing", "weights": "w.pt"}, r"does not accept these settings.*weights"),
    ({"name": "testing", "extra": 1}, r"unknown keys in generator spec: extra"),
    ({"weights": "w.pt"}, r"non-empty string `name`"),
    ({"name": "testing", "options": [1, 2]}, r"`options` must be a mapping"),
    (42, r"a name or a mapping"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(GeneratorSpecError, match=message):
        build_generator(spec)


def test_errors_inside_a_factory_are_not_hidden():
    with pytest.raises(RuntimeError, match="failed on purpose"):
        build_generator(f"{USER}:raises_inside")


def test_gen_info_prints_identity_from_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("generator:\n  name: testing\n  options: {resolution: 16}\n")
    result = CliRunner().invoke(gen_info, ["--params", str(params)])
    assert result.exit_code == 0, result.output
    assert '"identity": "testing@' in result.output and '"resolution": 16' in result.output


def test_gen_info_reports_a_bad_spec_without_a_traceback():
    result = CliRunner().invoke(gen_info, ["--name", "nope"])
    assert result.exit_code != 0
    assert "unknown generator 'nope'" in result.output
    assert "Traceback" not in result.output


def test_gen_info_help_explains_every_option():
    result = CliRunner().invoke(gen_info, ["--help"])
    for option in ["--params", "--name", "--weights", "--list"]:
        assert option in result.output


def test_a_command_builds_the_params_spec_or_what_its_options_name():
    params_spec = {"name": "testing", "weights": None, "options": {"resolution": 16}}
    assert command_spec(params_spec) == params_spec
    assert command_spec("testing") == {"name": "testing"}
    assert command_spec(params_spec, weights="w.pt") == {**params_spec, "weights": "w.pt"}
    assert command_spec(params_spec, name="house", weights="h.pt") == {"name": "house", "weights": "h.pt"}
    assert command_spec(None, name="house") == {"name": "house", "weights": None}
    with pytest.raises(GeneratorSpecError, match="no `generator` section"):
        command_spec(None)
    with pytest.raises(GeneratorSpecError, match="`generator` section: a generator spec is a name or a mapping"):
        command_spec(7)


def test_gen_info_weights_alone_replace_the_params_generators(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("generator:\n  name: house\n")
    result = CliRunner().invoke(gen_info, ["--params", str(params), "--weights", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "missing.pt" in result.output and "Traceback" not in result.output
    params.write_text("generator: [not, a, spec]\n")
    result = CliRunner().invoke(gen_info, ["--params", str(params)])
    assert result.exit_code == 1 and "a name or a mapping" in result.output


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", bytes(range(256)) * 4])
def test_a_house_weights_file_that_is_not_one_is_a_clear_error(tmp_path, content):
    (tmp_path / "weights.pt").write_bytes(content)
    result = CliRunner().invoke(gen_info, ["--name", "house", "--weights", str(tmp_path / "weights.pt")])
    assert result.exit_code == 1 and "is not a house generator weights file: truncated, or not a torch file" in \
        result.output and "Traceback" not in result.output
