"""Where a behaviour study's cases run: in this process (the default) or on an existing Ray cluster.

Both executors take the JSON jobs of ``core.behaviour.cases`` and yield ``(index, result)``: the
local one in order, the Ray one as cases finish. Only text and session bytes cross between
processes: a Ray worker sends back the result as a JSON string and the session file's bytes (read
by the caller through ``core.session``'s checks), never an object of ours. Ray is imported only by
``RayExecutor`` (``pip install 'circuitdesk[ray]'``); nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from typing import Iterator

from core.behaviour.cases import run_case_job
from core.errors import CircuitDeskError
from core.jobs import JobContext

RAY_MISSING = "--executor ray needs Ray on this machine and on the cluster: pip install 'circuitdesk[ray]'."
CONNECT_TIMEOUT = 5.0  # seconds to reach the cluster's address before saying it cannot be reached
PROBE_TIMEOUT = 120.0  # seconds for the first worker to answer (it may have to start a Python process)
WAIT_INTERVAL = 0.2  # seconds between looks at the cancellation flag while cases run
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
_RUNNING = threading.Lock()  # Ray's connection is one per process: one study on Ray at a time


class LocalExecutor:
    """Every case in this process, one after another, in order (the default)."""

    def run(self, jobs: list[dict], ctx: JobContext) -> Iterator[tuple[int, dict]]:
        n = len(jobs)
        for k, job in enumerate(jobs):
            ctx.check_cancelled()
            yield k, run_case_job(job, ctx.sub(k / n, (k + 1) / n, f"[{k + 1}/{n}] {job['case']['name']}"))


class RayExecutor:
    """Every case as a Ray task on an existing cluster (``ray start --head`` on one machine, ``ray start
    --address=HEAD:6379`` on the others and on this one); results as they finish.

    Results equal the serial run's: each task runs with this process's torch thread count (``threads``),
    since Ray workers default to one thread and float sums can round differently with another count.
    This process connects as a driver and disconnects at the end; it never starts or stops the cluster.
    """

    def __init__(self, address: str, threads: int | None = None) -> None:
        if not address:
            raise CircuitDeskError("--executor ray needs the cluster's --address (e.g. 10.0.0.5:6379, or 'auto').")
        self.address = address
        self.threads = threads
        self._ray = import_ray()  # says at once, before any case runs, when Ray is missing

    def run(self, jobs: list[dict], ctx: JobContext) -> Iterator[tuple[int, dict]]:
        if not jobs:
            return
        ray = self._ray
        n = len(jobs)
        if not _RUNNING.acquire(blocking=False):
            raise CircuitDeskError("Another study is running on a Ray cluster in this process; wait for it or "
                                   "cancel it first.")
        pending: dict = {}  # ObjectRef -> job index
        try:
            sigterm = self._connect()
            try:
                ctx.progress(0.0, f"Sending {n} cases to the Ray cluster at {self.address}")
                gpus = self._check_workers(ctx)
                threads = self.threads or _torch_threads()
                resources = [_resources(job, gpus, self.address) for job in jobs]
                task = ray.remote(max_retries=1)(run_case_on_worker)  # one retry when a node is lost
                for k, job in enumerate(jobs):
                    job = dict(job, threads=int(job.get("threads") or threads))
                    pending[task.options(**resources[k]).remote(json.dumps(job))] = k
                done = 0
                while pending:
                    ctx.check_cancelled()
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_INTERVAL)
                    for ref in ready:
                        k = pending.pop(ref)
                        result = self._result(ref, jobs[k])
                        done += 1
                        ctx.progress(done / n, f"[{done}/{n}] {result['name']}: "
                                               f"{'ok' if result['status'] == 'ok' else 'FAILED'}")
                        yield k, result
            finally:
                # cancelled (Cancelled, KeyboardInterrupt), failed, or the caller stopped reading: stop the rest
                for ref in pending:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # the cluster is gone or the task just finished: nothing left to stop
                        pass
                ray.shutdown()  # this driver only; the cluster keeps running
                _restore_sigterm(sigterm)
        finally:
            _RUNNING.release()

    # -- connecting --------------------------------------------------------------------------------------
    def _connect(self):
        """Connect this process to the cluster as a driver (after checking, quickly, that the address
        answers); returns the SIGTERM handler ``ray.init`` replaces, to put back afterwards."""
        ray = self._ray
        if ray.is_initialized():
            raise CircuitDeskError("This process is already connected to a Ray cluster; run the study from a fresh "
                                   "process.")
        host, port = self._gcs_address()
        _check_reachable(self.address, host, port)
        _check_local_node(self.address)
        # Ray retries a failed connection about 20 times, 30 s each; the address answered, so a few will do
        # (process-wide, read by ray.init only; a value the user set wins)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "3")
        sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            ray.init(address=f"{host}:{port}", include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level=logging.ERROR, namespace="circuitdesk")
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            ray.shutdown()  # whatever the failed attempt left behind
            _restore_sigterm(sigterm)
            raise CircuitDeskError(f"Cannot connect to the Ray cluster at {self.address} "
                                   f"({_first_line(e)}); check --address.") from None
        return sigterm

    def _gcs_address(self) -> tuple[str, int]:
        """(host, port) of the cluster's GCS, as ``ray.init`` would resolve ``--address`` ('auto': the
        cluster ``ray start`` last started or joined on this machine)."""
        address = self.address.strip()
        if address.startswith("ray://") or address.startswith(("http://", "https://")):
            raise CircuitDeskError(f"--address {address} is not a cluster address; give the head node's host:port "
                                   "that 'ray start --head' printed (e.g. 10.0.0.5:6379), from a machine that joined "
                                   "the cluster.")
        if address == "local":
            raise CircuitDeskError("--address local would start a new Ray instance; start the cluster with 'ray start "
                                   "--head' and give its address (or 'auto' on a machine that joined it).")
        try:
            from ray._private.services import canonicalize_bootstrap_address  # deferred: Ray is optional

            resolved = canonicalize_bootstrap_address(address)
        except (ImportError, AttributeError):  # Ray moved it: resolve the plain host:port ourselves
            resolved = None if address == "auto" else address
        except (ValueError, ConnectionError) as e:
            if address != "auto":
                raise CircuitDeskError(f"--address {address} is not a Ray cluster address ({_first_line(e)}); give "
                                       "host:port, e.g. 10.0.0.5:6379.") from None
            resolved = None
        if resolved is None:
            raise CircuitDeskError("--address auto found no Ray cluster on this machine; join one with 'ray start "
                                   "--address=HEAD:6379' or give the head node's host:port.")
        host, sep, port = resolved.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CircuitDeskError(f"--address {address} is not a Ray cluster address; give host:port, "
                                   "e.g. 10.0.0.5:6379.")
        return host.strip("[]"), int(port)

    def _check_workers(self, ctx: JobContext) -> float:
        """Check that the cluster's workers can import this version of Circuit Desk (one small task);
        returns the cluster's GPU count."""
        ray = self._ray
        probe = ray.remote(num_cpus=0, max_retries=0)(_worker_facts_task())
        ref = probe.remote()
        waited = 0.0
        while not ray.wait([ref], timeout=WAIT_INTERVAL)[0]:
            ctx.check_cancelled()
            waited += WAIT_INTERVAL
            if waited >= PROBE_TIMEOUT:
                ray.cancel(ref, force=True)
                raise CircuitDeskError(f"No Ray worker at {self.address} answered within {PROBE_TIMEOUT:.0f} s; check "
                                       "'ray status' on the cluster.")
        try:
            facts = json.loads(ray.get(ref))
        except ray.exceptions.RayError as e:
            raise CircuitDeskError(f"A Ray worker at {self.address} failed before running a case "
                                   f"({_first_line(e)}).") from None
        if facts.get("missing"):
            raise CircuitDeskError(f"The Ray workers at {self.address} cannot import Circuit Desk "
                                   f"({facts['missing']}); install it on every node of the cluster "
                                   "(pip install 'circuitdesk[ray]').")
        import core  # deferred: only to read the version this process runs

        if facts.get("version") != core.__version__:
            raise CircuitDeskError(f"The Ray workers at {self.address} run Circuit Desk {facts.get('version')} and "
                                   f"this machine {core.__version__}; install the same version on both.")
        return float(ray.cluster_resources().get("GPU", 0))

    def _result(self, ref, job: dict) -> dict:
        """A finished task's result (JSON text + session bytes), or the case failed when its worker did."""
        ray = self._ray
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as e:
            # a worker or node that died (memory, a crash): that case fails, the others go on
            if "No module named 'core'" in str(e):
                return _failed(job, f"a Ray worker at {self.address} cannot import Circuit Desk; install it on every "
                                    "node of the cluster")
            cause = getattr(e, "cause", None)  # what the task raised, when it raised (else the worker died)
            why = _first_line(e) if not isinstance(cause, BaseException) else \
                f"{type(cause).__name__}: {_first_line(cause)}"
            return _failed(job, f"its Ray worker failed ({why})")
        try:
            text, session = value
            result = json.loads(text)
            if not isinstance(result, dict) or not (session is None or isinstance(session, bytes)):
                raise ValueError
        except (TypeError, ValueError):
            return _failed(job, "its Ray worker sent back something other than a result and a session file")
        result["session"] = session
        return result


def executor_for(settings) -> LocalExecutor | RayExecutor:
    """The executor a ``CompareSettings`` asks for (``executor``, ``address``)."""
    if settings.executor == "local":
        return LocalExecutor()
    if settings.executor == "ray":
        return RayExecutor(settings.address)
    raise CircuitDeskError(f"Unknown --executor {settings.executor!r}; use local or ray.")


def import_ray():
    """The ``ray`` module, with usage statistics off; one sentence when it is not installed."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing phones home
    try:
        import ray  # deferred: optional (the ray extra), and slow to import
    except ImportError:
        raise CircuitDeskError(RAY_MISSING) from None
    return ray


# -- on a worker -------------------------------------------------------------------------------------------
def run_case_on_worker(job_text: str) -> tuple[str, bytes | None]:
    """A Ray task: run one case with the driver's thread count; (result as JSON text, session bytes)."""
    import torch  # deferred: only a worker that runs a case needs it

    job = json.loads(job_text)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    result = run_case_job(job)
    session = result.pop("session")
    return json.dumps(result, default=_plain), session


def _plain(value):
    """A numpy scalar in a result as the Python number it holds (json.dumps cannot write float32)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _worker_facts_task():
    """The task sent before the cases: can a worker import Circuit Desk, and which version (JSON text).
    A closure, which Ray ships by value: it runs even where ``core`` cannot be imported, and says so
    instead of failing to load."""

    def worker_facts() -> str:
        import importlib  # deferred: runs on the worker, shipped by value
        import json as json_  # deferred: runs on the worker, shipped by value

        try:
            core = importlib.import_module("core")
            importlib.import_module("core.behaviour.cases")
        except ImportError as e:
            return json_.dumps({"missing": str(e)})
        return json_.dumps({"version": getattr(core, "__version__", None)})

    return worker_facts


# -- helpers -----------------------------------------------------------------------------------------------
def _resources(job: dict, gpus: float, address: str) -> dict:
    """A task's Ray resources: one CPU, and one GPU when the case runs on CUDA (or 'auto' on a cluster
    that has GPUs)."""
    device = str(job.get("device", "auto"))
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        if gpus <= 0:
            raise CircuitDeskError(f"The suite runs on device {device} but the Ray cluster at {address} has no GPU; "
                                   "use device = \"cpu\" or add GPU nodes.")
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def _check_reachable(address: str, host: str, port: int) -> None:
    """One sentence within ``CONNECT_TIMEOUT`` when nothing answers at ``host:port``, or what answers
    is not a Ray cluster's GCS (a gRPC server: it answers HTTP/2's preface with a SETTINGS frame),
    rather than Ray's own retries for minutes."""
    via = "" if address == f"{host}:{port}" else f"{host}:{port}: "  # what Ray made of it ('auto', localhost)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as s:
            s.settimeout(CONNECT_TIMEOUT)
            s.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.gaierror:
        raise CircuitDeskError(f"Cannot find the Ray cluster's host {host!r} (--address {address}); check the "
                               "name.") from None
    except TimeoutError:
        raise CircuitDeskError(f"The Ray cluster at {address} did not answer within {CONNECT_TIMEOUT:.0f} s "
                               f"({via}no reply); check --address and that the cluster is running ('ray status' on "
                               "its head node).") from None
    except OSError as e:
        raise CircuitDeskError(f"Cannot reach the Ray cluster at {address} ({via}{e.strerror or e}); check --address "
                               "and that the cluster is running ('ray status' on its head node).") from None
    if len(head) < 9 or head[3] != 0x4:
        raise CircuitDeskError(f"{address} answers but is not a Ray cluster's address ({via}no gRPC reply); give "
                               "the head node's host:port that 'ray start --head' printed (e.g. 10.0.0.5:6379), not "
                               "its dashboard's.")


def _check_local_node(address: str) -> None:
    """A Ray driver talks to the cluster through a Ray node on its own machine; without one,
    ``ray.init`` waits a minute before failing."""
    try:
        from ray._private.services import find_node_ids  # deferred: Ray is optional

        nodes = find_node_ids()
    except Exception:  # Ray moved it: let ray.init say what is wrong
        return
    if not nodes:
        raise CircuitDeskError(f"This machine is not a node of the Ray cluster at {address}; join it first with "
                               f"'ray start --address={address}', or run the study on one of its nodes.")


def _torch_threads() -> int:
    import torch  # deferred: the driver needs it only to read its thread count

    return torch.get_num_threads()


def _restore_sigterm(handler) -> None:
    """Put back the SIGTERM handler ``ray.init`` replaced (a window should not exit through Ray's)."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _failed(job: dict, why: str) -> dict:
    """The result of a case that failed outside ``run_case_job`` (its worker died), in that function's form."""
    case = job["case"]
    return {"name": case["name"], "method": str(case.get("method", "attribution")), "status": "failed",
            "error": f"The case did not run: {why}.", "seconds": 0.0, "result": {}, "command": "", "session": None,
            "prediction": ["", 0.0], "correct": None}


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__).rstrip(".")[:200]
