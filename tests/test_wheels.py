"""Modules from shipped wheels: what a bare GPU machine imports the benchmark's dependencies from."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from generator.wheels import fits_this_python, import_from_wheels

THIS = f"cp{sys.version_info.major}{sys.version_info.minor}"


@pytest.fixture(autouse=True)
def restored_import_state(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("wheeltest_"):
            del sys.modules[name]


def write_wheel(folder, name, members):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return path


def test_a_missing_module_comes_from_its_wheel(tmp_path):
    write_wheel(tmp_path / "a", "wheeltest_one-1.0-py3-none-any.whl", {"wheeltest_one/__init__.py": "VALUE = 1\n"})
    write_wheel(tmp_path / "b", f"Wheeltest_Two-2.0-{THIS}-{THIS}-manylinux_2_28_x86_64.whl",
                {"wheeltest_two.py": "VALUE = 2\n"})
    sources = import_from_wheels({"json": "json", "wheeltest_one": "wheeltest-one", "wheeltest_two": "wheeltest-two"},
                                 [tmp_path / "a", tmp_path / "b", tmp_path / "absent"])
    assert sources == {"json": "installed", "wheeltest_one": "wheeltest_one-1.0-py3-none-any.whl",
                       "wheeltest_two": f"Wheeltest_Two-2.0-{THIS}-{THIS}-manylinux_2_28_x86_64.whl"}
    import wheeltest_one
    import wheeltest_two
    assert wheeltest_one.VALUE == 1 and wheeltest_two.VALUE == 2


def test_the_newest_wheel_for_this_python_is_taken_and_others_left(tmp_path):
    write_wheel(tmp_path, "wheeltest_three-1.0-py3-none-any.whl", {"wheeltest_three.py": "VALUE = 1\n"})
    write_wheel(tmp_path, "wheeltest_three-1.1-py3-none-any.whl", {"wheeltest_three.py": "VALUE = 11\n"})
    write_wheel(tmp_path, "wheeltest_three-9.0-cp27-cp27mu-manylinux1_x86_64.whl",
                {"wheeltest_three.py": "VALUE = 9\n"})
    assert import_from_wheels({"wheeltest_three": "wheeltest_three"}, [tmp_path])["wheeltest_three"].startswith(
        "wheeltest_three-1.1-")
    import wheeltest_three
    assert wheeltest_three.VALUE == 11


def test_what_neither_imports_nor_has_a_wheel_is_named_with_the_wheels_to_ship(tmp_path):
    write_wheel(tmp_path, "wheeltest_four-1.0-cp27-cp27mu-manylinux1_x86_64.whl", {"wheeltest_four.py": ""})
    write_wheel(tmp_path, "wheeltest_five-1.0-py3-none-any.whl", {"elsewhere.py": ""})
    with pytest.raises(ImportError) as error:
        import_from_wheels({"wheeltest_four": "wheeltest-four", "wheeltest_five": "wheeltest_five", "json": "json"},
                           [tmp_path])
    message = str(error.value)
    assert "wheeltest_four (no wheel)" in message and "unusable wheeltest_five-1.0-py3-none-any.whl" in message
    assert message.endswith(f"in {tmp_path}: wheeltest-four, wheeltest_five") and "json" not in message


def test_a_wheel_never_writes_outside_its_folder(tmp_path):
    wheels = tmp_path / "deep" / "wheels"
    write_wheel(wheels, "wheeltest_six-1.0-py3-none-any.whl",
                {"wheeltest_six.py": "VALUE = 6\n", "../../escaped.py": "", "/absolute_escape.py": ""})
    import_from_wheels({"wheeltest_six": "wheeltest_six"}, [wheels])
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "deep" / "escaped.py").exists()
    assert sorted(p.name for p in wheels.iterdir()) == ["wheeltest_six-1.0-py3-none-any.whl"]


@pytest.mark.parametrize("name, fits", [
    ("click-8.5.1-py3-none-any.whl", True),
    ("braceexpand-0.1.7-py2.py3-none-any.whl", True),
    (f"pyyaml-6.0.4-{THIS}-{THIS}-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("scipy-1.18.1-cp27-cp27m-manylinux_2_28_x86_64.whl", False),
    ("six-1.0-py2-none-any.whl", False),
    ("not-a-wheel.whl", False),
])
def test_the_python_tag_decides_which_wheels_fit(name, fits):
    assert fits_this_python(name) is fits


def test_the_unpacked_folder_is_removed_when_the_process_exits(tmp_path):
    write_wheel(tmp_path, "wheeltest_six-1.0-py3-none-any.whl", {"wheeltest_six.py": "VALUE = 6\n"})
    script = (f"from generator.wheels import import_from_wheels; "
              f"import_from_wheels({{'wheeltest_six': 'wheeltest_six'}}, [{str(tmp_path)!r}]); "
              f"import wheeltest_six; print(wheeltest_six.__file__)")
    root = Path(__file__).resolve().parents[1]
    printed = subprocess.run([sys.executable, "-c", script], cwd=root, check=True, capture_output=True, text=True)
    unpacked = Path(printed.stdout.strip()).parent
    assert unpacked.name.startswith("wheels-") and not unpacked.exists()
