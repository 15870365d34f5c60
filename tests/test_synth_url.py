"""gen-synth into an fsspec URL: the same bytes as a local folder, whole files only, one run at a
time through a lease, resume and synth-verify over the URL.  `file://` runs every URL code path
across worker processes; an S3 bucket served by moto inside the test checks a real object store."""

import json
import socket
import time

import pytest
from click.testing import CliRunner

from generator.runs import LOCK_NAME, FolderLocked
from generator.synth.store import LeaseLock, LocalFolder, StoreError, UrlFolder, open_output
from generator.synth.preview import main as synth_preview
from generator.synth.verify import main as synth_verify
from generator.synth.verify import verify_folder
from tests.test_synth_gen import project, run, shard_bytes, write_params  # noqa: F401 (fixture)


def url_bytes(url: str) -> dict[str, bytes]:
    store = open_output(url)
    names = sorted(name for name in store.listing() if name.startswith("synth-") and name.endswith(".tar"))
    return {name: store.read_bytes(name) for name in names} | {"manifest.json": store.read_bytes("manifest.json")}


def test_open_output_tells_paths_from_urls(tmp_path):
    assert isinstance(open_output(tmp_path / "set"), LocalFolder)
    assert isinstance(open_output(f"file://{tmp_path}/set"), UrlFolder)
    with pytest.raises(StoreError, match="nosuchprotocol"):
        open_output("nosuchprotocol://bucket/set")


def test_a_file_url_gives_the_bytes_of_a_local_folder_and_verifies(project):
    write_params(project, workers=2, output="reference")
    run()
    url = f"file://{project}/remote/set"
    result = run("--output", url)
    assert url in result.output
    assert url_bytes(url) == shard_bytes(project / "reference")
    listing = open_output(url).listing()
    assert LOCK_NAME not in listing and not [name for name in listing if name.startswith(".")]
    assert verify_folder(url).ok
    verified = CliRunner().invoke(synth_verify, [url])
    assert verified.exit_code == 0 and "OK" in verified.output


def test_a_url_set_resumes_after_losing_shards_and_cleans_leftovers(project):
    write_params(project, output="reference")
    run()
    url = f"file://{project}/remote"
    run("--output", url)
    store = open_output(url)
    store.remove("synth-000001.tar")                     # as if the run died before this shard was put
    store.remove("synth-000001.stats.json")
    store.remove("manifest.json")
    store.write_bytes(".synth-000001.tar.0123abcd.tmp", b"half a shard")   # a dead run's upload
    result = run("--output", url)
    assert "(2 already complete)" in result.output
    assert url_bytes(url) == shard_bytes(project / "reference")
    assert ".synth-000001.tar.0123abcd.tmp" not in store.listing()


def test_a_url_folder_with_foreign_files_is_refused(project):
    url = f"file://{project}/remote"
    open_output(url).create()
    open_output(url).write_bytes("notes.txt", b"someone else's")
    failed = run("--output", url, expect=1)
    assert "notes.txt" in failed.output and "did not write" in failed.output


def test_verify_reports_a_changed_shard_over_a_url(project):
    url = f"file://{project}/remote"
    run("--output", url)
    store = open_output(url)
    data = bytearray(store.read_bytes("synth-000000.tar"))
    data[600] ^= 0xFF
    store.write_bytes("synth-000000.tar", bytes(data))
    report = verify_folder(url)
    assert any("synth-000000.tar does not match its sha256" in problem for problem in report.problems)


# --- the lease ------------------------------------------------------------------------------------

def test_a_live_lease_refuses_a_second_run_naming_its_holder(tmp_path):
    folder = open_output(f"file://{tmp_path}/set")
    folder.create()
    with LeaseLock(folder, lease_seconds=30, settle_seconds=0):
        with pytest.raises(FolderLocked, match=f"pid .* on {socket.gethostname()}"):
            LeaseLock(folder, lease_seconds=30, settle_seconds=0).acquire()
    assert LOCK_NAME not in folder.listing()            # released: the lease file is gone
    LeaseLock(folder, lease_seconds=30, settle_seconds=0).acquire().release()


def test_a_lease_is_renewed_while_held_and_lapses_when_its_holder_dies(tmp_path):
    folder = open_output(f"file://{tmp_path}/set")
    folder.create()
    lease = 2.0                                          # renewed every 0.67 s: 1.3 s of slack on a busy machine
    held = LeaseLock(folder, lease_seconds=lease, settle_seconds=0).acquire()
    time.sleep(1.5 * lease)                              # past the lease: only renewal keeps it
    with pytest.raises(FolderLocked, match="in use by another run"):
        LeaseLock(folder, lease_seconds=lease, settle_seconds=0).acquire()
    held._stop.set()                                     # the holder stops renewing, as a killed run does
    held._renewer.join()
    time.sleep(1.25 * lease)
    taker = LeaseLock(folder, lease_seconds=lease, settle_seconds=0).acquire()
    assert json.loads(folder.read_bytes(LOCK_NAME))["owner"] == taker.owner
    with pytest.raises(FolderLocked, match="lease lapsed"):
        held.check()                                     # the first holder learns it lost the folder
    taker.check()
    taker.release()


def test_an_unreadable_lease_is_not_taken_over(tmp_path):
    folder = open_output(f"file://{tmp_path}/set")
    folder.create()
    folder.write_bytes(LOCK_NAME, b"{not json")
    with pytest.raises(FolderLocked, match="cannot be read"):
        LeaseLock(folder, lease_seconds=30, settle_seconds=0).acquire()


# --- a real object store ----------------------------------------------------------------------------

@pytest.fixture
def s3_bucket(monkeypatch):
    """A bucket on an S3 server (moto) started inside the test; its URL."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sets")
        import fsspec
        fsspec.filesystem("s3").clear_instance_cache()    # no client bound to an earlier server
        yield "s3://sets/synth"
    finally:
        server.stop()


def test_an_s3_bucket_gets_the_bytes_of_a_local_folder_and_resumes(project, s3_bucket):
    write_params(project, workers=2, output="reference")
    run()
    run("--output", s3_bucket)
    assert url_bytes(s3_bucket) == shard_bytes(project / "reference")
    store = open_output(s3_bucket)
    assert LOCK_NAME not in store.listing()
    assert verify_folder(s3_bucket).ok
    store.remove("synth-000002.tar")
    store.remove("synth-000002.stats.json")
    store.remove("manifest.json")
    result = run("--output", s3_bucket)
    assert "(2 already complete)" in result.output
    assert url_bytes(s3_bucket) == shard_bytes(project / "reference")


def test_an_object_store_that_refuses_the_run_is_a_clear_error(project, monkeypatch):
    pytest.importorskip("s3fs")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_SHARED_CREDENTIALS_FILE": str(project / "none"), "AWS_CONFIG_FILE": str(project / "none"),
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()
    failed = run("--output", "s3://sets/synth", expect=1)      # botocore's NoCredentialsError is no OSError
    assert "cannot write to output s3://sets/synth: NoCredentialsError" in failed.output
    verified = CliRunner().invoke(synth_verify, ["s3://sets/synth"])
    assert verified.exit_code == 1 and "manifest.json cannot be read: cannot read s3://sets/synth/manifest.json: NoCredentialsError" in verified.output
    previewed = CliRunner().invoke(synth_preview, ["s3://sets/synth", "--out", str(project / "sheet.png")])
    assert previewed.exit_code == 1 and "s3://sets/synth cannot be listed" in previewed.output
    assert "NoCredentialsError" in previewed.output
    assert "Traceback" not in failed.output + verified.output + previewed.output
