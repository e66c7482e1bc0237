"""Pipeline runs shared by the integration tests: each is made once per session, two at a time.

Training from scratch is what makes these tests slow, and many tests need the same finished run.
A function decorated with `@shared_run` makes one such run; it becomes a session fixture of the
same name. Its first parameter is an empty folder to work in; its other parameters name the
shared runs it starts from (their values are passed in). `@background` does the same for the
expensive body of a single test; its fixture is a `Future` the test waits on (`.result()`
raises whatever the body raised, so a failure fails that test).

Runs the selected tests need start in background threads when the session starts (at most
WORKERS at once, in the order of PRIORITY), while the tests that need none of them run (the
tests are reordered: those first, then the unit tests, then the rest). Every tool runs with one
thread (tests/conftest.py), so two runs and a test share the two cores of a small machine without
OpenMP's spin-waiting slowing each other down many times over.

The rule: a test may read a shared run's folder, but a test that runs a tool there, edits a file
or writes anything first takes its own copy (`clone`: everything, including git, DVC and
Snakemake state and the outputs' modification times).
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import QAT8, job_stats, new_project, run, set_param, tool_env

WORKERS = 2
# Generous limit for training runs: about a minute each on an idle 2-core machine, but much longer
# when other jobs compete for the cores.
LONG = 3600
# The order in which queued runs start (and the tests that use them run): the shared runs, then
# the test bodies (`background`, `in_background`), the longest first where their dependencies
# allow, so that the session does not end on one long run while a core idles.
PRIORITY = [
    "two_seed_fresh", "slurm_run", "two_seed_snakemake", "two_seed_dvc", "data_run", "trained_upstream", "trained",
    "test_inq_and_pow2_cells_train_evaluate_and_stay_on_their_levels", "finished", "dvc_kill", "snakemake_kill",
    "test_queued_experiments_run_side_by_side_and_are_listed_with_their_metrics",
    "test_a_small_grid_runs_and_aggregates_over_seeds", "test_paths_with_spaces_and_quotes_work_end_to_end",
    "test_editing_one_methods_lambda_reruns_only_its_cells_in_both_tools",
    "test_ll_lambda_edit_reruns_only_lifelong_and_evaluate",
    "test_ssl_stages_and_a_self_supervised_start_through_snakemake_and_dvc",
    "test_dvc_repro_kill_in_task2_then_repro_resumes_bit_identical",
    "test_snakemake_kill_in_task1_then_rerun_incomplete_resumes_bit_identical",
    "test_lifelong_never_reads_test_data",
    "test_acs_coreset_and_scored_replay_run_through_snakemake",
    "test_dvc_and_a_step_by_hand_are_refused_while_snakemake_runs",
    "test_snakemake_is_refused_while_dvc_repro_runs",
    "test_a_silently_damaged_checkpoint_stops_evaluate_with_the_lifelong_rerun_command",
    "test_snakemake_reruns_lifelong_when_a_checkpoint_inside_its_folder_is_deleted",
    "test_dvc_flags_a_deleted_checkpoint_and_a_forced_evaluate_names_lifelong",
    "test_a_flipped_byte_in_the_store_is_flagged_by_dvc_and_stops_the_next_reader_under_snakemake",
]

_BUILDERS: dict[str, Callable] = {}


def clone(src: Path, dest: Path) -> Path:
    """A full copy of a project that has run (git, DVC and Snakemake state, outputs, mtimes)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _register(fn: Callable) -> str:
    name = fn.__name__
    assert name in PRIORITY, f"add {name} to PRIORITY in {__file__}"
    assert name not in _BUILDERS or _BUILDERS[name] is fn, f"two shared runs named {name}"
    _BUILDERS[name] = fn
    return name


def shared_run(fn: Callable) -> Callable:
    """`fn(folder, *runs)` makes a run once per session; the fixture `fn.__name__` is its value."""
    name = _register(fn)

    @pytest.fixture(scope="session", name=name)
    def fixture(shared_runs):
        return shared_runs.result(name)

    fixture.__doc__ = fn.__doc__
    return fixture


class Pending:
    """A background test body: `.result()` waits for it (helping with the queued runs meanwhile)
    and returns what it returned, or raises what it raised."""

    def __init__(self, runs: SharedRuns, name: str):
        self.runs, self.name = runs, name

    def result(self):
        return self.runs.result(self.name)


def background(fn: Callable) -> Callable:
    """`fn(folder, *runs)`, a test's expensive body, queued with the shared runs; its fixture
    `fn.__name__` is a `Pending` (the test calls `.result()`, which raises what `fn` raised)."""
    name = _register(fn)

    @pytest.fixture(scope="session", name=name)
    def fixture(shared_runs):
        shared_runs.future(name)
        return Pending(shared_runs, name)

    fixture.__doc__ = fn.__doc__
    return fixture


def in_background(test: Callable) -> Callable:
    """A test whose body runs with the shared runs: queued when the session starts, it runs on
    whichever thread is free; the test itself waits for it and fails with what the body raised.
    The body's first parameter is a folder of its own (in place of tmp_path); the others name
    shared runs. Put other marks above this decorator."""
    name = _register(test)

    def waiting(shared_runs):
        shared_runs.result(name)

    waiting.__name__, waiting.__qualname__ = test.__name__, test.__qualname__
    waiting.__doc__, waiting.__module__ = test.__doc__, test.__module__
    waiting.background_body = name
    return waiting


class SharedRuns:
    """Runs each registered run at most once: of the queued runs whose dependencies have
    finished, the first in PRIORITY, on WORKERS threads and on the tests' own thread while a test
    waits for one (so no thread waits while a run is ready to start)."""

    def __init__(self, factory: pytest.TempPathFactory):
        self.factory = factory
        self.futures: dict[str, Future] = {}
        self.waiting: dict[str, tuple[Path, list[str]]] = {}  # not started: folder, dependencies
        self.ready = threading.Condition()
        self.closing = False
        self.started = time.monotonic()
        self.times: dict[str, tuple[float, float]] = {}  # name -> (start, end), s since self.started
        self.threads = [threading.Thread(target=self._work, name=f"shared-run-{i}", daemon=True)
                        for i in range(WORKERS)]
        for thread in self.threads:
            thread.start()

    def future(self, name: str) -> Future:
        """The run's future; the run (and those it needs) is queued if it was not yet."""
        deps = list(inspect.signature(_BUILDERS[name]).parameters)[1:]
        for dep in deps:
            self.future(dep)
        with self.ready:
            if name not in self.futures:
                self.futures[name] = Future()
                self.waiting[name] = (self.factory.mktemp(name), deps)
                self.ready.notify_all()
            return self.futures[name]

    def result(self, name: str):
        """The run's value (or its error), running queued runs on this thread while it waits."""
        future = self.future(name)
        while True:
            with self.ready:
                while not future.done() and (job := self._take(first=name)) is None:
                    self.ready.wait()
            if future.done():
                return future.result()
            self._run(job)

    def _take(self, first: str | None = None) -> tuple[str, Path, list[str]] | None:
        """Unqueue `first` if it can start, else the first queued run in PRIORITY that can (its
        dependencies are done); None if none can. Call with the lock held."""
        startable = [n for n in self.waiting if all(self.futures[d].done() for d in self.waiting[n][1])]
        if not startable or self.closing:
            return None
        name = first if first in startable else min(startable, key=PRIORITY.index)
        return name, *self.waiting.pop(name)

    def _run(self, job: tuple[str, Path, list[str]]) -> None:
        name, folder, deps = job
        future = self.futures[name]
        if future.set_running_or_notify_cancel():
            start = time.monotonic() - self.started
            try:
                future.set_result(_BUILDERS[name](folder, *(self.futures[dep].result() for dep in deps)))
            except BaseException as exc:  # a failed dependency fails its dependents with its error
                future.set_exception(exc)
            self.times[name] = (start, time.monotonic() - self.started)
        with self.ready:
            self.ready.notify_all()

    def _work(self) -> None:
        while True:
            with self.ready:
                while not self.closing and (job := self._take()) is None:
                    self.ready.wait()
                if self.closing:
                    return
            self._run(job)

    def close(self) -> None:
        """Cancel what has not started; wait for what runs (its tools must not outlive the session)."""
        with self.ready:
            self.closing = True
            for name in self.waiting:
                self.futures[name].cancel()
            self.ready.notify_all()
        for thread in self.threads:
            thread.join()


_NEEDED = pytest.StashKey[list]()
_RUNS = pytest.StashKey[SharedRuns]()


def _needed(item: pytest.Item) -> set[str]:
    """The shared runs (and background body) a test needs."""
    body = getattr(getattr(item, "function", None), "background_body", None)
    return {name for name in getattr(item, "fixturenames", ()) if name in _BUILDERS} | ({body} if body else set())


@pytest.hookimpl(trylast=True)  # after -m and -k deselect: only the selected tests' runs start
def pytest_collection_modifyitems(session, config, items):
    """Tests that need no shared run first (integration, then unit), the others last, ordered by
    the last run they need, a module's tests staying together."""
    def rank(item) -> int:
        needed = _needed(item)
        return 1 + max(PRIORITY.index(n) for n in needed) if needed else 0

    module_rank: dict[str, int] = {}
    for item in items:
        key = item.nodeid.split("::")[0]
        module_rank[key] = max(module_rank.get(key, 0), rank(item))

    def order(pair):
        index, item = pair
        key = item.nodeid.split("::")[0]
        unit = not key.startswith("tests/integration/")
        return (module_rank[key] > 0, module_rank[key], unit, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]
    config.stash[_NEEDED] = [n for n in PRIORITY if any(n in _needed(item) for item in items)]


@pytest.fixture(scope="session", autouse=True)
def shared_runs(request, tmp_path_factory):
    """The session's shared runs, all those the selected tests need started at once."""
    runs = request.config.stash[_RUNS] = SharedRuns(tmp_path_factory)
    for name in request.config.stash.get(_NEEDED, []):
        runs.future(name)
    yield runs
    runs.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """When each shared run started and ended (shown with -v or --durations)."""
    runs = config.stash.get(_RUNS, None)
    if not runs or not runs.times or not (config.option.verbose > 0 or config.option.durations is not None):
        return
    terminalreporter.section("shared runs (seconds after the first started)")
    for name, (start, end) in sorted(runs.times.items(), key=lambda kv: kv[1]):
        terminalreporter.write_line(f"{start:7.1f} {end:7.1f} {end - start:7.1f}s  {name}")


# --- runs for more than one test file ------------------------------------------------------------

DATA_STAGES = ["download", "split", "replay", "count"]
DATA_OUTPUTS = ["data/store", "data/split", "data/replay", "data/counts/lifequant"]
# Snakemake sees the files inside a folder output: each folder's manifest stands for the folder.
DATA_TARGETS = [f"{out}/MANIFEST.json" for out in DATA_OUTPUTS]
# Everything `lifelong` needs: with these made, a run of METRICS is lifelong + evaluate.
UPSTREAM_OUTPUTS = [*DATA_TARGETS, QAT8]
UPSTREAM_STAGES = [*DATA_STAGES, "pretrain", "qat8"]
# The default training up to w8a8 (FP32 15 epochs, w8a8 5: enough for the accuracy thresholds of
# test_training), a short lifelong stage: its milestone (2) falls after the kill points of the
# resume tests, so a resume that lost the scheduler state would train epoch 3 at the wrong
# learning rate. CPU: bit-identical results are promised on CPU only.
SHORT_LIFELONG = {"train.device": "cpu", "lifelong.epochs": 3, "lifelong.milestones": [2]}


@shared_run
def data_run(folder: Path) -> Path:
    """A new project (default parameters) where `snakemake --cores 1` has made the data stages."""
    root = new_project(folder / "repo")
    out = run(["snakemake", "--cores", "1", *DATA_TARGETS], root, timeout=LONG)
    assert job_stats(out.stdout + out.stderr) == {s: 1 for s in DATA_STAGES}
    return root


@shared_run
def trained_upstream(folder: Path, data_run: Path) -> Path:
    """A project (default FP32 and w8a8 training, SHORT_LIFELONG) with every stage before
    lifelong made by `snakemake --cores 1` (one thread per job): `data_run`, then FP32 and w8a8.

    Not committed to DVC here: `dvc commit` rewrites committed files (new mtimes), after which
    Snakemake would see the FP32 checkpoint as newer than the qat8 curve and rerun qat8.
    """
    root = clone(data_run, folder / "repo")
    for key, value in SHORT_LIFELONG.items():
        set_param(root, key, value)
    run(["git", "commit", "-qam", "short lifelong stage"], root)
    out = run(["snakemake", "--cores", "1", *UPSTREAM_OUTPUTS], root, timeout=LONG)
    assert job_stats(out.stdout + out.stderr) == {"pretrain": 1, "qat8": 1}  # the data stages are up to date
    return root


@shared_run
def trained(folder: Path, trained_upstream: Path) -> Path:
    """`trained_upstream` finished by `snakemake --cores 1 all`, never interrupted."""
    root = clone(trained_upstream, folder / "repo")
    out = run(["snakemake", "--cores", "1", "all"], root, timeout=LONG)
    said = out.stdout + out.stderr
    assert job_stats(said) == {"lifelong": 1, "evaluate": 1, "aggregate": 1, "ptq": 1, "ptq_lifelong": 1, "all": 1}
    assert "resuming" not in said
    resume = root / ".lq-resume"
    assert not resume.exists() or not any(resume.iterdir()), f"left behind: {list(resume.iterdir())}"
    return root


# --- two seeds, one core -------------------------------------------------------------------------

# Short training on CPU (bit-identical results are promised on CPU), two seeds so shared and
# per-cell stages both appear, one OpenMP thread per job for both tools.
TWO_SEEDS = {
    "train.device": "cpu", "grid.seed": [0, 1],
    "pretrain.epochs": 2, "pretrain.milestones": [1],
    "qat8.epochs": 1, "qat8.milestones": [1],
    "lifelong.epochs": 2, "lifelong.milestones": [1],
}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SNAKEMAKE_ONE_CORE = ["snakemake", "--cores", "1", "all"]


def one_thread_env() -> dict[str, str]:
    return {**tool_env(), **ONE_THREAD}


def two_seed_project(root: Path) -> Path:
    """A new project (new_project) with the TWO_SEEDS parameters committed."""
    new_project(root)
    for key, value in TWO_SEEDS.items():
        set_param(root, key, value)
    run(["git", "commit", "-qam", "fast training"], root)
    return root


def wait_for(condition, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@dataclass
class BusyRun:
    """A run from scratch during which the same command was started a second time on its workspace."""
    root: Path                              # the finished project
    output: str                             # what the (first) run printed
    duration: float                         # seconds the (first) run took
    second: subprocess.CompletedProcess     # the second run: it should have given up, the workspace was busy
    second_took: float                      # seconds the second run took to give up
    status: str                             # `dvc status` right after the run (DVC runs only)


def busy_run(cmd: list[str], root: Path, is_busy: Callable[[Path], bool]) -> BusyRun:
    """Run `cmd` in `root` (one thread per job); once `is_busy(log)`, run it there a second time."""
    log = root.parent / "first.log"
    started = time.monotonic()
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, cwd=root, env=one_thread_env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: first.poll() is not None or is_busy(log))
        second_started = time.monotonic()
        second = subprocess.run(cmd, cwd=root, env=one_thread_env(), capture_output=True, text=True, timeout=120)
        second_took = time.monotonic() - second_started
        code = first.wait(timeout=LONG)
    duration = time.monotonic() - started
    assert code == 0, f"the first `{' '.join(cmd)}` failed:\n{log.read_text()[-4000:]}"
    status = run(["dvc", "status"], root).stdout if cmd[0] == "dvc" else ""
    return BusyRun(root, log.read_text(), duration, second, second_took, status)


@shared_run
def two_seed_fresh(folder: Path) -> Path:
    """A TWO_SEEDS project that has not run yet (copy it before running anything there)."""
    return two_seed_project(folder / "repo")


@shared_run
def two_seed_snakemake(folder: Path, two_seed_fresh: Path) -> BusyRun:
    """`two_seed_fresh` run from scratch by `snakemake --cores 1 all`, uninterrupted and timed: the
    fault suite's reference. Once it holds its lock, a second Snakemake is started there."""
    root = clone(two_seed_fresh, folder / "repo")
    locks = root / ".snakemake" / "locks"
    return busy_run(SNAKEMAKE_ONE_CORE, root, lambda log: locks.exists() and any(locks.iterdir()))


@shared_run
def two_seed_dvc(folder: Path, two_seed_fresh: Path) -> BusyRun:
    """`two_seed_fresh` run from scratch by `dvc repro` (one thread per stage). Once it runs a stage,
    a second `dvc repro` is started there."""
    root = clone(two_seed_fresh, folder / "repo")
    return busy_run(["dvc", "repro"], root, lambda log: "Running stage" in log.read_text())
