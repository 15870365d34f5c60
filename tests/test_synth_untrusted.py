"""synth-verify and synth-preview on sets from elsewhere: a hand-edited manifest, forged headers,
decompression bombs and bad samples are reported (verify: a problem and exit 1; preview: the
sample or shard skipped with a warning), never a traceback."""

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from generator.synth.preview import main as preview
from generator.synth.verify import main as verify
from generator.synth.writer import ShardWriter
from tests.test_synth_verify import RESOLUTION, copy, shard_set  # noqa: F401 (fixtures)


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def replace_member(shard: Path, name: str, data: bytes) -> None:
    """Rewrite a shard with member `name` holding `data` (its checksum no longer matches)."""
    with tarfile.open(shard) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]
    with ShardWriter(shard) as writer:
        for member, content in members:
            writer.add(member, data if member == name else content)
        writer.close()


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims a width x height grey picture; its pixel data
    does not decompress, so only a reader that decodes before checking the size says so."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"not zlib") + chunk(b"IEND", b""))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_reported(result, *texts: str) -> None:
    """Exit 1 through click (a reported problem), not an exception, and every text in the output."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    for text in texts:
        assert text in result.output, result.output


def run_preview(folder, out: Path, *options: str):
    result = CliRunner().invoke(preview, [str(folder), "--out", str(out), *options])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# synth-verify: a hand-edited manifest

def without(key):
    return lambda manifest: manifest.pop(key)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(shards=None), "`shards` is null, expected a list"),
    (lambda m: m["shards"].__setitem__(1, "synth-000001.tar"), "`shards[1]` is a string, expected an object"),
    (lambda m: m["shards"][0].pop("name"), "has no `shards[0].name` field"),
    (lambda m: m["shards"][2].pop("bytes"), "has no `shards[2].bytes` field"),
    (lambda m: m["shards"][0].update(samples="10"), "`shards[0].samples` is a string, expected an integer"),
    (lambda m: m["shards"][0].update(samples=True), "`shards[0].samples` is a boolean, expected an integer"),
    (lambda m: m["shards"][1].update(shard="a"), "`shards[1].shard` is a string, expected an integer"),
    (lambda m: m.update(totals=[]), "`totals` is a list, expected an object"),
    (lambda m: m.update(parameters=None), "`parameters` is null, expected an object"),
    (without("generator"), "has no `generator` field"),
    (lambda m: m["generator"].update(latent_dim="16"), "`generator.latent_dim` is a string"),
    (lambda m: m.update(card="README.md"), "`card` is a string, expected an object or null"),
    (lambda m: m.update(members=["jpg", 1]), "`members[1]` is an integer, expected a string"),
    (lambda m: m.update(members=["mask.png", "json"]), "`members` lacks jpg"),
], ids=["shards-null", "row-string", "row-no-name", "row-no-bytes", "samples-string", "samples-bool",
        "shard-string", "totals-list", "parameters-null", "no-generator", "latent-dim-string", "card-string",
        "member-number", "members-lack-jpg"])
def test_verify_reports_a_malformed_manifest_naming_the_field(copy, edit, message):
    edit_manifest(copy, edit)
    assert_reported(CliRunner().invoke(verify, [str(copy)]), "problem: ", message)


def test_verify_accepts_a_manifest_without_the_optional_fields(copy):
    """Sets made before cards and empty-mask counts existed have neither."""
    def drop_optional(manifest):
        manifest["totals"].pop("empty_masks")
        manifest.pop("card")
    edit_manifest(copy, drop_optional)
    result = CliRunner().invoke(verify, [str(copy)])
    assert result.exit_code == 0, result.output


# synth-verify: members

def test_verify_reports_an_empty_latent_member(copy):
    replace_member(copy / "synth-000002.tar", "000002_000001.latent.npy", b"")
    assert_reported(CliRunner().invoke(verify, [str(copy)]), "sample 000002_000001.latent.npy does not load")


def test_verify_refuses_a_latent_header_claiming_a_huge_shape_before_reading_it(copy):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
    replace_member(copy / "synth-000002.tar", "000002_000001.latent.npy", header.getvalue() + b"\0" * 64)
    assert_reported(CliRunner().invoke(verify, [str(copy)]),
                    "sample 000002_000001.latent.npy is float32 (1000000000000,)")


def test_verify_reports_a_decompression_bomb_mask(copy):
    replace_member(copy / "synth-000000.tar", "000000_000003.mask.png", png_claiming(20000, 20000))
    assert_reported(CliRunner().invoke(verify, [str(copy)]), "sample 000000_000003.mask.png does not decode")


def test_verify_checks_a_pictures_size_before_decoding_it(copy):
    """Under Pillow's bomb limit, a huge header is refused by its size, never decoded."""
    replace_member(copy / "synth-000000.tar", "000000_000003.mask.png", png_claiming(12000, 12000))
    assert_reported(CliRunner().invoke(verify, [str(copy)]),
                    f"sample 000000_000003.mask.png is PNG L (12000, 12000), expected an 8-bit grey PNG "
                    f"{RESOLUTION} x {RESOLUTION}")


def test_verify_reports_a_shard_cut_between_members(copy):
    """tarfile reads a tar cut at a member's header as whole; the missing end marker tells."""
    path = copy / "synth-000000.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[8].offset
    path.write_bytes(path.read_bytes()[:cut])
    assert_reported(CliRunner().invoke(verify, [str(copy)]), "synth-000000.tar: ends without the tar end marker")


def test_verify_warns_of_empty_masks(copy):
    edit_manifest(copy, lambda manifest: manifest["totals"].update(empty_masks=3))
    result = CliRunner().invoke(verify, [str(copy)])
    assert result.exit_code == 0, result.output
    assert "warning: 3 of the 25 masks are empty" in result.output


# synth-preview: bad samples and shards are skipped with a warning

@pytest.mark.parametrize("member, data, message", [
    ("000000_000001.jpg", b"not a jpeg", "sample 000000_000001 skipped: jpg does not decode"),
    ("000000_000001.mask.png", b"\x89PNG\r\n\x1a\ngarbage", "sample 000000_000001 skipped: mask.png does not decode"),
    ("000000_000001.mask.png", png(np.zeros((12, 12), np.uint8)),
     f"sample 000000_000001 skipped: mask.png is PNG L (12, 12), expected the image's size "
     f"({RESOLUTION}, {RESOLUTION})"),
    ("000000_000001.mask.png", png_claiming(20000, 20000), "sample 000000_000001 skipped: mask.png does not decode"),
    ("000000_000001.jpg", png_claiming(12000, 12000), "sample 000000_000001 skipped: jpg is PNG L (12000, 12000)"),
], ids=["garbage-jpg", "garbage-mask", "small-mask", "bomb-mask", "huge-image"])
def test_preview_skips_a_bad_sample_with_a_warning(copy, tmp_path, member, data, message):
    replace_member(copy / "synth-000000.tar", member, data)
    result = run_preview(copy, tmp_path / "sheet.png", "--count", "3")
    assert result.exit_code == 0, result.output
    assert f"warning: synth-000000.tar: {message}" in result.output
    assert "wrote" in result.output and "3 samples" in result.output


def test_preview_never_allocates_a_size_a_tar_header_claims(copy, tmp_path):
    forged = tarfile.TarInfo("000000_000000.jpg")
    forged.size = 10 ** 12
    (copy / "synth-000000.tar").write_bytes(forged.tobuf(format=tarfile.GNU_FORMAT) + b"\xff" * 1024)
    result = run_preview(copy, tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert "warning: synth-000000.tar: member '000000_000000.jpg' claims 1000000000000 bytes" in result.output


def test_preview_warns_of_truncated_empty_and_broken_shards(copy, tmp_path):
    path = copy / "synth-000000.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[8].offset_data + 10          # inside the third sample's image
    path.write_bytes(path.read_bytes()[:cut])
    (copy / "synth-000001.tar").write_bytes(b"")
    (copy / "synth-000003.tar").symlink_to(copy / "nowhere.tar")
    result = run_preview(copy, tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert "warning: synth-000000.tar: member" in result.output and "past the end of the file" in result.output
    assert "warning: synth-000001.tar: cannot be read as a tar file" in result.output
    assert "warning: synth-000003.tar: skipped, not a file" in result.output


def test_preview_reads_a_url_folder(shard_set, tmp_path):
    out = tmp_path / "sheet.png"
    result = run_preview(f"file://{shard_set}", out, "--count", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(out).format == "PNG"


def test_preview_refuses_an_out_path_under_a_file(shard_set, tmp_path):
    result = run_preview(shard_set, shard_set / "manifest.json" / "p.png")
    assert_reported(result, "manifest.json is a file, not a folder")


def test_preview_refuses_a_suffix_other_than_png(shard_set, tmp_path):
    result = run_preview(shard_set, tmp_path / "p.jpg")
    assert_reported(result, "name it NAME.png")
    assert not (tmp_path / "p.jpg").exists()
    assert ".png" in CliRunner().invoke(preview, ["--help"]).output


@pytest.mark.parametrize("content, message", [(": : :\n", "is not valid YAML"),
                                              ("synth: [1, 2]\n", "synth section must map settings to values")])
def test_a_malformed_params_file_is_a_clear_error_not_a_silent_default(tmp_path, content, message):
    (tmp_path / "params.yaml").write_text(content)
    for command in (verify, preview):
        result = CliRunner().invoke(command, ["--params", str(tmp_path / "params.yaml")])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
