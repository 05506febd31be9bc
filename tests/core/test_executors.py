"""Where a study's cases run: the same cases through LocalExecutor and RayExecutor (a Ray instance this
module starts and stops) give identical results and sessions; a bad address, a missing Ray, a cluster
without Circuit Desk and a cancelled study each end at once, with one sentence or ``Cancelled``.

Every test that imports Ray runs in a process of its own (``own_process``): a Ray driver leaves
process-wide state after ``ray.shutdown()`` (fatal-signal handlers that replace Python's, threads), and
the test process went on to crash, with no traceback, in a later Qt test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.audit import load_suite
from core.behaviour.cases import case_job
from core.errors import CircuitDeskError
from core.executors import RAY_MISSING, LocalExecutor, RayExecutor, executor_for
from core.jobs import Cancelled, JobContext
from core.session import load_session
from core.settings import CompareSettings

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
SHARED_ADDRESS = "CIRCUITDESK_TEST_RAY_ADDRESS"  # the module's Ray instance, handed to each test's own process
PROMPT = "when mary and john went to the store , john gave a drink to"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(pythonpath: str, name: str) -> tuple[str, subprocess.Popen, Path]:
    """A one-CPU Ray head node in a process group of its own (workers import ``core`` through
    ``pythonpath``); its address, the ``ray start`` process and its temp folder."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix=f"cd{name}-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, PYTHONPATH=pythonpath, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=100000000"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        stop_ray(proc, temp)
        pytest.fail(f"ray start failed:\n{out[-3000:]}")
    return f"127.0.0.1:{port}", proc, temp


def stop_ray(proc: subprocess.Popen, temp: Path) -> None:
    """Stop that instance only: every process in the group ``ray start`` began (not ``ray stop``, which
    stops every Ray instance of this user on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        for _ in range(10):  # up to 1 s for the group to end (some of Ray's processes ignore SIGTERM)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    subprocess.run(["rm", "-rf", str(temp)], check=False)


@pytest.fixture(scope="module")
def ray_address():
    """One Ray instance for the module, started by the test process; a test's own process uses it."""
    if os.environ.get(SHARED_ADDRESS):
        yield os.environ[SHARED_ADDRESS]
        return
    assert RAY.exists(), "Ray is not installed in this environment: pip install -e '.[dev]' (it has the ray extra)"
    t0 = time.perf_counter()
    address, proc, temp = start_ray(str(ROOT), "ray")
    print(f"\nRay started in {time.perf_counter() - t0:.1f} s at {address}", file=sys.stderr)
    os.environ[SHARED_ADDRESS] = address
    try:
        yield address
    finally:
        del os.environ[SHARED_ADDRESS]
        stop_ray(proc, temp)


@pytest.fixture(scope="module")
def jobs(tiny_folder, tmp_path_factory):
    """One attribution case and one circuit case on the tiny Llama, as the study sends them."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "suite.toml").write_text(f"""
name = "two methods"
model = "{tiny_folder('llama')}"
device = "cpu"
[[cases]]
name = "names"
prompt = "{PROMPT}"
max_nodes = 20
group = "a"
[[cases]]
name = "induction"
method = "circuit"
task = "induction"
scoring = "eap"
n_pairs = 3
top_n = 5
group = "b"
""")
    suite = load_suite(folder / "suite.toml")
    return [case_job(suite.model, suite.device, suite.dtype, str(suite.folder), suite.case(k), suite.name)
            for k in range(len(suite.cases))]


def without_clock(obj):
    """A manifest without what the clock decides (when it was made, how many seconds it took)."""
    if isinstance(obj, dict):
        return {k: without_clock(v) for k, v in obj.items() if k != "created" and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [without_clock(v) for v in obj]
    return obj


def sessions_equal(a: bytes, b: bytes, tmp_path: Path) -> None:
    (tmp_path / "a.cdesk").write_bytes(a)
    (tmp_path / "b.cdesk").write_bytes(b)
    sa, sb = load_session(tmp_path / "a.cdesk"), load_session(tmp_path / "b.cdesk")
    arrays_a, arrays_b = dict(sa.payload().arrays()), dict(sb.payload().arrays())
    assert arrays_a.keys() == arrays_b.keys() and arrays_a
    for name in arrays_a:  # bit for bit (NaNs included)
        x, y = np.asarray(arrays_a[name]), np.asarray(arrays_b[name])
        assert (x.dtype, x.shape) == (y.dtype, y.shape) and x.tobytes() == y.tobytes(), name
    assert (sa.logit_lens is None) == (sb.logit_lens is None)
    if sa.logit_lens is not None:
        assert sa.logit_lens.tobytes() == sb.logit_lens.tobytes()
    assert without_clock(sa.manifest) == without_clock(sb.manifest)


@pytest.mark.own_process
def test_ray_gives_the_serial_results_exactly(ray_address, jobs, tmp_path):
    """Bit for bit: the tasks run with this process's torch thread count (with one thread, as Ray
    workers start, the circuit case's edge scores differed in the last bits, ~1e-7, when written)."""
    t0 = time.perf_counter()
    local = dict(LocalExecutor().run(jobs, JobContext()))
    seen = []
    ctx = JobContext(lambda p: seen.append(p), min_step=0.0, min_interval=0.0)
    bad = dict(jobs[0], threads=-1)  # a task that raises on its worker (an impossible thread count)
    remote = dict(RayExecutor(ray_address).run(jobs + [bad], ctx))
    print(f"\nlocal {len(jobs)} cases + Ray {len(jobs) + 1} cases: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    assert sorted(local) == list(range(len(jobs))) and sorted(remote) == list(range(len(jobs) + 1))
    # that case fails alone, the others are as in this process
    failed = remote.pop(len(jobs))
    assert failed["status"] == "failed" and failed["session"] is None
    assert failed["error"].startswith("The case did not run: its Ray worker failed (RuntimeError: set_num_threads")
    for k in range(len(jobs)):
        a, b = dict(local[k]), dict(remote[k])
        assert a["status"] == "ok", a["error"]
        sa, sb = a.pop("session"), b.pop("session")
        del a["seconds"], b["seconds"]
        assert a == b
        sessions_equal(sa, sb, tmp_path)
    # progress: the share of finished cases, with each case's name
    finished = [p for p in seen if p.fraction > 0]
    assert [round(p.fraction, 3) for p in finished] == [0.333, 0.667, 1.0]
    assert [p.message[:6] for p in finished] == ["[1/3] ", "[2/3] ", "[3/3] "]
    assert sorted(p.message[6:] for p in finished) == ["induction: ok", "names: FAILED", "names: ok"]
    import ray

    assert not ray.is_initialized()  # disconnected


@pytest.mark.own_process
def test_cancelling_after_the_first_result_stops_the_rest(ray_address, jobs, monkeypatch):
    import ray

    cancelled = []
    real_cancel = ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: (cancelled.append(kw), real_cancel(ref, **kw))[1])
    many = [dict(jobs[0], case=dict(jobs[0]["case"], name=f"names-{i}")) for i in range(4)]
    ctx = JobContext()
    got = []
    with pytest.raises(Cancelled):
        for k, result in RayExecutor(ray_address).run(many, ctx):
            got.append(k)
            ctx.cancel()
    assert len(got) == 1
    assert cancelled == [{"force": True}] * 3  # every case not yet finished, its worker stopped
    assert not ray.is_initialized()


@pytest.mark.own_process
def test_keyboard_interrupt_cancels_every_pending_case(ray_address, jobs, monkeypatch):
    import ray

    cancelled = []
    real_cancel, real_wait = ray.cancel, ray.wait
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: (cancelled.append(kw), real_cancel(ref, **kw))[1])

    def wait(refs, **kw):
        if len(refs) == len(jobs):  # the first wait on the cases (the worker check waits on one task)
            raise KeyboardInterrupt
        return real_wait(refs, **kw)

    monkeypatch.setattr(ray, "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        list(RayExecutor(ray_address).run(jobs, JobContext()))
    assert cancelled == [{"force": True}] * len(jobs)
    assert not ray.is_initialized()


@pytest.mark.own_process
def test_an_address_where_no_cluster_answers_is_one_sentence_at_once(jobs):
    port = free_port()
    with pytest.raises(CircuitDeskError, match=rf"^Cannot reach the Ray cluster at 127\.0\.0\.1:{port}\b.*--address"):
        list(RayExecutor(f"127.0.0.1:{port}").run(jobs, JobContext()))
    with pytest.raises(CircuitDeskError, match=r"Cannot find the Ray cluster's host 'no-such-host\.invalid'"):
        list(RayExecutor("no-such-host.invalid:6379").run(jobs, JobContext()))
    with pytest.raises(CircuitDeskError, match="is not a Ray cluster address"):
        list(RayExecutor("10.0.0.5").run(jobs, JobContext()))
    with pytest.raises(CircuitDeskError, match="is not a cluster address"):
        list(RayExecutor("ray://10.0.0.5:10001").run(jobs, JobContext()))
    import ray

    assert not ray.is_initialized()


@pytest.mark.own_process
def test_a_port_that_is_not_ray_is_one_sentence(jobs):
    """Something answers (here an HTTP server, as a dashboard's port would), but it is not a GCS."""
    server = socket.socket()
    server.bind(("", 0))  # every interface: Ray reads 127.0.0.1 as this machine's own address
    server.listen()
    port = server.getsockname()[1]

    def answer():
        try:
            conn, _ = server.accept()
        except OSError:  # closed: the executor never connected
            return
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(CircuitDeskError, match=rf"^127\.0\.0\.1:{port} answers but is not a Ray cluster's"):
            list(RayExecutor(f"127.0.0.1:{port}").run(jobs, JobContext()))
    finally:
        server.close()
        thread.join(5)


@pytest.mark.own_process
def test_a_machine_outside_the_cluster_is_told_to_join_it(ray_address, jobs, monkeypatch):
    import ray._private.services

    monkeypatch.setattr(ray._private.services, "find_node_ids", lambda: [])  # no Ray node on this machine
    with pytest.raises(CircuitDeskError, match=rf"not a node of the Ray cluster at {ray_address}; join it first"):
        list(RayExecutor(ray_address).run(jobs, JobContext()))


def test_ray_missing_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    with pytest.raises(CircuitDeskError) as err:
        RayExecutor("10.0.0.5:6379")
    assert str(err.value) == RAY_MISSING
    with pytest.raises(CircuitDeskError, match=r"pip install 'circuitdesk\[ray\]'"):
        executor_for(CompareSettings(executor="ray", address="10.0.0.5:6379"))
    assert isinstance(executor_for(CompareSettings()), LocalExecutor)  # the default needs no Ray


def test_executors_module_imports_neither_ray_nor_torch():
    code = "import sys, core.executors; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.own_process
def test_a_cluster_without_circuit_desk_is_one_sentence(jobs, tmp_path, monkeypatch):
    """Workers that cannot import ``core``: a node whose Python hides this checkout (the editable
    install's finder removed at start-up), the driver run from a folder without ``core``."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')\n"
        "                    and 'editable' not in getattr(f, '__name__', '')]\n")
    address, proc, temp = start_ray(str(bare), "bare")
    try:
        monkeypatch.chdir(tmp_path)  # Ray puts the driver's folder on the workers' path
        with pytest.raises(CircuitDeskError, match=rf"^The Ray workers at {address} cannot import Circuit Desk "
                                                   r"\(No module named 'core'\); install it on every node"):
            list(RayExecutor(address).run(jobs, JobContext()))
    finally:
        stop_ray(proc, temp)
