"""gen-synth over Ray, on a local cluster started here: the same bytes as the multiprocessing run, a
worker killed mid-shard rendered again, and a driver killed mid-run resumed; and a run that
starts a cluster of its own stops it when a shard fails."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.test_synth_gen import REPO, project, run, shard_bytes, write_params  # noqa: F401 (fixture)

ray = pytest.importorskip("ray")

SMALL = {"n": 40, "shard_size": 10, "batch_size": 4}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs for this module; its address lets other processes join it."""
    before = os.environ.get("PYTHONPATH")
    # The cluster's worker processes import this checkout's code, as the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), before]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def reference(project, **settings):
    write_params(project, **{**SMALL, **settings}, workers=2, output="reference")
    run()
    return shard_bytes(project / "reference")


def temporary_shards(folder: Path) -> list[Path]:
    return list(folder.glob(".synth-*.tar.*.tmp"))


def holder_of(path: Path) -> int | None:
    """The pid of a process with `path` open, from /proc."""
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(path):
                return int(fd.parts[2])
        except OSError:
            continue
    return None


def test_a_ray_run_gives_the_bytes_of_the_multiprocessing_run(project, cluster):
    expected = reference(project)
    write_params(project, **SMALL, distributor="ray")
    result = run()
    assert "40 samples from" in result.output
    assert shard_bytes(project / "shards") == expected      # the manifest too: it names no distributor
    assert not list((project / "shards").glob(".*.tmp"))


def test_a_ray_run_into_a_url_gives_the_same_bytes(project, cluster):
    from tests.test_synth_url import url_bytes
    expected = reference(project)
    write_params(project, **SMALL, distributor="ray")
    url = f"file://{project}/remote/set"
    run("--output", url)
    assert url_bytes(url) == expected


def test_a_worker_killed_mid_shard_is_retried_and_the_bytes_are_the_same(project, cluster):
    expected = reference(project, batch_size=1)
    write_params(project, **SMALL | {"batch_size": 1}, distributor="ray", retries=2)
    folder = (project / "shards").resolve()
    killed = []

    def kill_a_worker():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for temporary in temporary_shards(folder):
                pid = holder_of(temporary)
                if pid is not None and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, temporary.name))
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    run()
    killer.join()
    assert killed, "no worker was seen writing a shard"
    assert shard_bytes(folder) == expected


def test_a_killed_driver_is_resumed_with_the_same_bytes(project, cluster):
    expected = reference(project, batch_size=1)
    write_params(project, n=60, shard_size=10, batch_size=1, distributor="ray", ray_address=cluster)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "generator.synth.main"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    folder = project / "shards"
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("*.stats.json")) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.01)
        assert list(folder.glob("*.stats.json")), "the driver ended before its first shard"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert not (folder / "manifest.json").exists()
    time.sleep(1)                                   # the cluster stops the dead driver's tasks
    result = run("--n", 40)
    assert "already complete)" in result.output and "(0 already complete)" not in result.output
    assert shard_bytes(folder) == expected


def test_a_shard_that_fails_every_time_stops_the_run_with_its_error(project, cluster):
    write_params(project, **SMALL, distributor="ray", retries=1, filters={"size": {"max_foreground": 0.15}},
                 max_candidates_per_sample=1)
    failed = run(expect=1)
    assert "only" in failed.output and "passed the filters" in failed.output
    assert not (project / "shards" / "manifest.json").exists()


def processes_naming(text: str) -> list[str]:
    """The command lines of the processes that mention `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line[:200])
    return found


def test_a_run_on_a_cluster_of_its_own_stops_it_when_a_shard_fails(project):
    """Without --ray-address the run starts a local cluster; when a shard fails for good, the run
    says which and why, and none of that cluster's processes outlives it (no task is left to
    finish on a machine the user thinks idle)."""
    write_params(project, **SMALL, distributor="ray", retries=1, workers=2,
                 filters={"size": {"max_foreground": 0.15}}, max_candidates_per_sample=1)
    ray_root = tempfile.mkdtemp(prefix="ray", dir="/tmp")     # short: Ray's socket paths live here
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_root}
    env.pop("RAY_ADDRESS", None)
    try:
        stopped = subprocess.run([sys.executable, "-m", "generator.synth.main"], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 1, stopped.stderr[-2000:]
        assert "passed the filters" in stopped.stderr and "Traceback" not in stopped.stderr
        deadline = time.monotonic() + 30
        while (left := processes_naming(ray_root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, left
    finally:
        if processes_naming(ray_root):                 # a failed check must not leave a cluster running
            subprocess.run(["pkill", "-KILL", "-f", ray_root], check=False)
        shutil.rmtree(ray_root, ignore_errors=True)
