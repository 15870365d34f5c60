"""gen-synth never loses finished shards and never waits silently: a shard over its candidate budget,
a larger n, a changed budget, other settings, a second run into the same folder, a worker killed
by a signal, the run's own process killed (its workers end too) and a worker that cannot start."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from generator.synth.distributor import WorkerFailed, run_shards
from generator.synth.manifest import read_manifest
from generator.synth.settings import SynthSettings
from generator.synth.worker import RenderJob
from tests.test_synth_gen import REPO, project, run, shard_bytes, write_params  # noqa: F401 (fixture)

STRICT = {"size": {"max_foreground": 0.15}}   # shards of 10 need 24, 27, 29, 55, 26 and 40 candidates


def test_a_shard_over_budget_keeps_the_finished_ones_and_a_larger_budget_finishes(project):
    write_params(project, n=60, shard_size=10, filters=STRICT, output="reference")
    run()
    write_params(project, n=60, shard_size=10, filters=STRICT, max_candidates_per_sample=3)
    failed = run(expect=1)
    assert "shard 3: only" in failed.output and "3 finished shard(s) are kept" in failed.output
    folder = project / "shards"
    kept = sorted(p.name for p in folder.glob("synth-*.tar"))
    assert kept == ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]
    assert not list(folder.glob(".*"))                                   # no temporary or lock left
    result = run("--max-candidates-per-sample", 6)
    assert "(3 already complete)" in result.output
    made, reference = shard_bytes(folder), shard_bytes(project / "reference")
    assert made.pop("manifest.json") != reference.pop("manifest.json")   # it records the budget asked for
    assert made == reference
    assert [row for row in read_manifest(folder)["shards"]] == read_manifest(project / "reference")["shards"]


def test_a_larger_n_extends_the_set_and_a_budget_change_resumes(project):
    write_params(project, n=65, shard_size=20, output="reference")
    run()
    write_params(project, n=45, shard_size=20)
    run()
    folder = project / "shards"
    first = (folder / "synth-000000.tar").stat().st_mtime_ns
    result = run("--n", 65)
    assert "(2 already complete)" in result.output       # shard 2 held 5 samples and now holds 20
    assert (folder / "synth-000000.tar").stat().st_mtime_ns == first
    assert shard_bytes(folder) == shard_bytes(project / "reference")
    result = run("--n", 65, "--max-candidates-per-sample", 80)
    assert "(4 already complete)" in result.output


def test_other_settings_are_refused_naming_the_keys_and_every_file_is_kept(project):
    run()
    before = shard_bytes(project / "shards")
    failed = run("--seed", 4, "--jpeg-quality", 80, expect=1)
    text = " ".join(failed.output.split())
    assert "parameters.seed: 0 -> 4" in text and "parameters.jpeg_quality: 95 -> 80" in text
    assert "every file is kept" in text and "--overwrite" in text
    assert shard_bytes(project / "shards") == before
    # A moved direction file or bank is the same content: the run resumes.
    (project / "direction.json").rename(project / "moved.json")
    assert "(3 already complete)" in run("--direction", "moved.json").output


def test_replace_finished_replaces_only_a_finished_set(project):
    run()
    result = run("--seed", 4, "--replace-finished")
    assert "finished run with other settings (parameters.seed: 0 -> 4)" in " ".join(result.output.split())
    folder = project / "shards"
    (folder / "manifest.json").unlink()                   # now an unfinished set
    failed = run("--seed", 5, "--replace-finished", expect=1)
    assert "parameters.seed: 4 -> 5" in " ".join(failed.output.split())
    assert len(list(folder.glob("synth-*.tar"))) == 3


SLOW = {"n": 120, "shard_size": 10, "batch_size": 1}     # one candidate per generator call


def start_slow_run(project, **settings):
    write_params(project, **SLOW, **settings)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "generator.synth.main"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, process, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert condition(), "the run ended before the condition held"


def test_a_second_run_into_the_same_folder_refuses_at_once_naming_the_first(project):
    first = start_slow_run(project)
    try:
        lock = project / "shards" / ".run.lock"
        wait_for(lambda: lock.is_file() and lock.read_text().endswith("\n"), first)
        started = time.monotonic()
        failed = run("--output", "shards", expect=1)
        assert time.monotonic() - started < 10
        assert "in use by another run" in failed.output and f'"pid": {first.pid}' in failed.output
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The killed run's lock file is left behind, but the kernel released its lock: a rerun goes on.
    assert (project / "shards" / ".run.lock").is_file()
    run()
    assert not (project / "shards" / ".run.lock").exists()


def test_a_killed_worker_stops_the_run_naming_its_shard_and_a_rerun_completes_it(project):
    process = start_slow_run(project, workers=2)
    folder = project / "shards"
    try:
        wait_for(lambda: len(list(folder.glob(".synth-*.tar.*.tmp"))) >= 2, process)
        servers = [child for child in psutil.Process(process.pid).children()
                   if "forkserver" in " ".join(child.cmdline())]
        workers = [worker for server in servers for worker in server.children()]   # forked by the server
        assert workers, "no worker processes found"
        killed_at = time.monotonic()
        workers[0].send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
        assert time.monotonic() - killed_at < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert "a worker process died while rendering shard" in stderr
    assert not (folder / "manifest.json").exists()
    run()
    write_params(project, **SLOW, workers=1, output="reference")
    run()
    assert shard_bytes(folder) == shard_bytes(project / "reference")


@pytest.mark.parametrize("distributor", ["multiprocessing", "pipeline"])
def test_the_workers_end_when_the_run_alone_is_killed(project, distributor):
    process = start_slow_run(project, workers=2, distributor=distributor)
    try:
        wait_for(lambda: list((project / "shards").glob(".synth-*.tar.*.tmp")), process)
        left = survivors_of_killing_alone(process, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not left, "a process of the killed run is still running"
    run()                                             # a rerun finishes the set


def survivors_of_killing_alone(process: subprocess.Popen, timeout: float) -> list[psutil.Process]:
    """SIGKILL `process` alone, as the out-of-memory killer would, and wait up to `timeout` s for
    the processes it started; return those still running (killed afterwards, so none is left to
    the rest of the suite)."""
    tree = psutil.Process(process.pid).children(recursive=True)
    try:
        process.send_signal(signal.SIGKILL)
        process.wait()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        return [child for child in alive if running(child)]
    finally:
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE   # a zombie has ended, only not been reaped
    except psutil.NoSuchProcess:
        return False


def test_a_worker_that_cannot_start_stops_the_run_with_its_message(project, tmp_path):
    settings = SynthSettings(n=40, shard_size=10, sampler="gaussian", workers=2, output=str(tmp_path))
    job = RenderJob(settings=settings, generator_spec={"name": "testing", "options": {"resolution": 32}},
                    generator_identity="testing@not-this-one", shift=(0.0,) * 16, bank_path=None,
                    output=str(tmp_path), config_digest="x")
    started = time.monotonic()
    with pytest.raises(WorkerFailed, match="could not start: RuntimeError: generator built as testing@"):
        run_shards(job, [(0, 10), (1, 10), (2, 10)], workers=2)
    assert time.monotonic() - started < 60


def test_an_edited_renderer_is_another_run(project, monkeypatch):
    run()
    import generator.synth.main as synth_main
    monkeypatch.setattr(synth_main, "code_digest", lambda: "edited")
    failed = run("--n", 60, expect=1)
    assert "code: " in failed.output and '-> "edited"' in " ".join(failed.output.split())


def test_a_smaller_n_is_refused_unless_a_finished_set_may_be_replaced(project):
    run()                                                          # 45 samples: shards of 20, 20 and 5
    failed = run("--n", 25, expect=1)
    assert "does not plan (synth-000002.tar" in " ".join(failed.output.split())
    result = run("--n", 25, "--replace-finished")
    assert "(1 already complete)" in result.output
    assert sorted(p.name for p in (project / "shards").glob("synth-*.tar")) == ["synth-000000.tar",
                                                                                 "synth-000001.tar"]
    assert read_manifest(project / "shards")["totals"]["samples"] == 25
