"""Where per-case work runs: in this process, on a local Dask cluster, on an existing Dask scheduler, or on SLURM.

``compute.executor`` in the configuration names the engine (no scheduler is built here; Dask does the work):

- ``serial``: one case after another in this process (the default);
- ``local:N``: a ``dask.distributed.LocalCluster`` of N worker processes on this machine (one thread each),
  started when the first map needs it and closed with the executor; with GPUs present, network maps run on
  a second local cluster of one worker per GPU (``torch.cuda.set_device`` by worker), CPU maps on the N;
- ``dask:<address>``: an existing scheduler (``dask:tcp://10.0.0.5:8786``); its workers must see the
  cohort and the run folder at the same paths (a shared file system);
- ``slurm``: a ``dask_jobqueue.SLURMCluster`` with the resources of ``compute.slurm``, scaled to
  ``compute.slurm.jobs`` jobs.

:meth:`Executor.map` runs ``fn(item, **shared)`` for every item and returns a :class:`MapResult`: the values of
the items that finished and the error of each that did not (a case whose worker died is one of those; the
others go on). Results never depend on the executor: every item carries its own seeds, and a map's values come
back in the items' order. Progress is a tqdm bar on stderr (the terminal under ``make run-all``, the cell
output in a notebook), advanced as items finish wherever they run.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from joblib import Parallel, delayed
from tqdm import tqdm

from glioma_nb.config import ConfigError

KINDS = ("serial", "local", "dask", "slurm")


def parse(spec: str) -> tuple[str, str]:
    """``compute.executor`` -> (kind, argument): ``serial`` -> (serial, ""), ``local:4`` -> (local, "4"),
    ``dask:tcp://host:8786`` -> (dask, "tcp://host:8786"), ``slurm`` -> (slurm, "")."""
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    if kind in ("serial", "slurm") and not arg:
        return kind, ""
    if kind == "local" and re.fullmatch(r"[1-9][0-9]*", arg):
        return kind, arg
    if kind == "dask" and arg:
        return kind, arg
    raise ConfigError(f"compute.executor {spec!r} is not one of serial | local:N (N worker processes, e.g. local:4) | "
                      "dask:<scheduler address> (e.g. dask:tcp://10.0.0.5:8786) | slurm (compute.slurm resources)")


def n_gpus() -> int:
    """CUDA devices visible here (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class MapResult:
    """What a map gives back: ``values`` (item -> value, in the items' order) of the items that finished,
    ``errors`` (item -> ``Type: message``, the whole message) of those that did not."""

    values: dict[Any, Any] = field(default_factory=dict)
    errors: dict[Any, str] = field(default_factory=dict)

    def raise_errors(self, what: str, fix: str = "", error: type[Exception] = RuntimeError) -> None:
        """Raise ``error`` naming every failed item with its error (``what`` says of what; ``fix``, how to
        redo them)."""
        if self.errors:
            lines = "\n".join(f"  {k}: " + v.replace("\n", "\n    ") for k, v in self.errors.items())
            raise error(f"{what}: {len(self.errors)} of {len(self.errors) + len(self.values)} case(s) failed "
                               f"({', '.join(map(str, self.errors))}); the others finished"
                               f":\n{lines}" + (f"\n{fix}" if fix else ""))


def _describe(exc: BaseException) -> str:
    """``Type: message`` (the whole message: a case's error says what to fix, sometimes over several lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _guarded(fn: Callable[..., Any], item: Any, shared: Mapping[str, Any]) -> tuple[bool, Any]:
    """(True, value) of ``fn(item, **shared)``, or (False, its error): a serial map's item, here or in a joblib
    process, whose failure must not stop the others."""
    try:
        return True, fn(item, **shared)
    except Exception as exc:
        return False, _describe(exc)


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pool_running() -> bool:
    """Whether joblib's active backend is one whose workers are already running (Dask, threads): nothing to start."""
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    return type(backend).__name__ not in ("LokyBackend", "MultiprocessingBackend", "SequentialBackend")


def effective_jobs(n_jobs: int) -> int:
    """How many workers joblib's active backend gives ``n_jobs`` (-1 on Dask: every worker of the cluster)."""
    from joblib.parallel import get_active_backend

    return max(1, int(get_active_backend()[0].effective_n_jobs(n_jobs)))


#: seconds a fresh pool of joblib (loky) processes costs before its first task (measured here: 1.9 s, the
#: workers importing scikit-learn and scikit-survival)
POOL_START_S = 2.0


def parallel_if_worth(fn: Callable[..., Any], items: list[Any], n_jobs: int = -1,
                      pool_start_s: float = POOL_START_S) -> list[Any]:
    """``[fn(*item) for item in items]``, spread over joblib processes only when that gains more than starting
    them: the first item runs here and is timed, and the rest go to a pool when they would take longer than
    ``pool_start_s`` more serially than spread. Under a running backend (a Dask cluster) everything goes to it.
    The same values either way, in the items' order (each item carries its own seeds)."""
    if not items:
        return []
    if pool_running():
        return list(Parallel(n_jobs=n_jobs)(delayed(fn)(*item) for item in items))
    jobs = min(n_jobs if n_jobs > 0 else cpu_count(), len(items))
    if jobs <= 1:
        return [fn(*item) for item in items]
    t0 = time.perf_counter()
    first = fn(*items[0])
    rest = items[1:]
    if (time.perf_counter() - t0) * len(rest) * (1 - 1 / jobs) < pool_start_s:
        return [first] + [fn(*item) for item in rest]
    return [first] + list(Parallel(n_jobs=jobs)(delayed(fn)(*item) for item in rest))


def _on_worker(fn: Callable[..., Any], item: Any, gpu: bool, kwargs: Mapping[str, Any], threads: int = 1) -> Any:
    """A map item on a Dask worker: the worker's share of the CPUs for torch (Dask starts workers with one
    thread: OMP_NUM_THREADS=1), this worker's GPU for a network map; then run."""
    if threads > 1:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if gpu:
        import torch
        from distributed import get_worker

        if torch.cuda.is_available():
            name = get_worker().name
            index = name if isinstance(name, int) else sum(map(ord, str(name)))
            torch.cuda.set_device(index % torch.cuda.device_count())
    return fn(item, **kwargs)


class Executor:
    """The engine of ``compute.executor`` (see the module docstring); a context manager that closes the
    clusters it started. ``slurm``: the ``compute.slurm`` mapping (queue, account, cores, memory, walltime,
    jobs, job_extra_directives); ``worker_failures``: how many times a case whose worker died is tried again
    elsewhere before it is reported failed (Dask's ``allowed-failures``)."""

    def __init__(self, spec: str = "serial", *, slurm: Mapping[str, Any] | None = None, worker_failures: int = 1):
        self.spec = str(spec)
        self.kind, self.arg = parse(self.spec)
        self.slurm = dict(slurm or {})
        self.worker_failures = int(worker_failures)
        self._clients: dict[str, Any] = {}
        self._clusters: list[Any] = []

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Executor":
        comp = config.get("compute") or {}
        return cls(comp.get("executor", "serial"), slurm=comp.get("slurm"),
                   worker_failures=comp.get("worker_failures", 1))

    def __repr__(self) -> str:
        return f"Executor({self.spec!r})"

    @property
    def distributed(self) -> bool:
        return self.kind != "serial"

    @property
    def threads_per_worker(self) -> int:
        """torch threads of a local worker: this machine's CPUs shared among the workers (1 elsewhere: a
        scheduler's or SLURM's workers are sized by their own configuration)."""
        return max(1, cpu_count() // int(self.arg)) if self.kind == "local" else 1

    @property
    def n_workers(self) -> int:
        """Workers of the CPU cluster (1 serially; that of the scheduler once connected)."""
        if self.kind == "serial":
            return 1
        if self.kind == "local":
            return int(self.arg)
        client = self.client()
        return max(1, len(client.scheduler_info()["workers"]))

    def client(self, gpu: bool = False) -> Any:
        """The Dask client of this executor (started on first use); ``gpu``: the per-GPU local cluster when
        this machine has GPUs and the executor is ``local:N``."""
        if self.kind == "serial":
            raise ValueError("a serial executor has no Dask client")
        key = "gpu" if gpu and self.kind == "local" and n_gpus() else "cpu"
        if key in self._clients:
            return self._clients[key]
        import dask
        from distributed import Client

        # a worker holds one case at a time (saturation 1.0: none queued on it), so a worker that dies loses only
        # the case it was running; that case is retried worker_failures times on other workers
        with dask.config.set({"distributed.scheduler.allowed-failures": self.worker_failures,
                              "distributed.scheduler.worker-saturation": 1.0}):
            if self.kind == "local":
                from distributed import LocalCluster

                n = n_gpus() if key == "gpu" else int(self.arg)
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
                self._clusters.append(cluster)
                client = Client(cluster)
                client.wait_for_workers(n)     # every worker up before the shared objects are broadcast
            elif self.kind == "dask":
                client = Client(self.arg)
            else:
                client = Client(self.slurm_cluster())
        self._clients[key] = client
        return client

    def slurm_cluster(self, scale: bool = True) -> Any:
        """The ``dask_jobqueue.SLURMCluster`` of ``compute.slurm`` (its ``job_script()`` is the sbatch script
        each worker job gets), scaled to ``compute.slurm.jobs`` jobs unless ``scale`` is false."""
        from dask_jobqueue import SLURMCluster

        opts = {k: v for k, v in self.slurm.items() if k != "jobs" and v not in (None, "", [])}
        try:
            cluster = SLURMCluster(**opts)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"compute.slurm {opts}: {exc}") from None
        self._clusters.append(cluster)
        if scale:
            cluster.scale(jobs=int(self.slurm.get("jobs", 1)))
        return cluster

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, desc: str = "", progress: bool = True,
            gpu: bool = False, n_jobs: int = 1, **shared: Any) -> MapResult:
        """``fn(item, **shared)`` for every item: serially here (in ``n_jobs`` joblib processes when that is more
        than 1: a step's own ``n_jobs`` setting), or one Dask task per item (``shared`` objects are sent to every
        worker once; ``n_jobs`` is then the cluster's business). An item that raises, or whose worker dies, is
        recorded in ``errors`` and the others go on."""
        items = list(items)
        out = MapResult()
        done: dict[Any, Any] = {}
        bar = tqdm(total=len(items), desc=desc or getattr(fn, "__name__", "map"), disable=not progress or not items,
                   file=sys.stderr, mininterval=1.0, dynamic_ncols=False)
        try:
            if self.kind == "serial":
                runs = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_guarded)(fn, item, shared)
                                                                      for item in items)
                for item, (ok, value) in zip(items, runs):
                    if ok:
                        done[item] = value
                    else:
                        out.errors[item] = value
                        bar.write(f"{desc}: {item} failed: {value.splitlines()[0]}", file=sys.stderr)
                    bar.update()
            else:
                self._map_dask(fn, items, gpu, shared, done, out.errors, bar, desc)
        finally:
            bar.close()
        out.values = {item: done[item] for item in items if item in done}
        out.errors = {item: out.errors[item] for item in items if item in out.errors}
        return out

    def _map_dask(self, fn: Callable[..., Any], items: list[Any], gpu: bool, shared: Mapping[str, Any],
                  done: dict[Any, Any], errors: dict[Any, str], bar: Any, desc: str) -> None:
        from distributed import as_completed

        client = self.client(gpu=gpu)
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", desc or getattr(fn, "__name__", "map")).strip("-")
        run = uuid.uuid4().hex[:8]
        pending = list(enumerate(items))
        futures: dict[Any, tuple[int, Any]] = {}
        queue = as_completed()
        sent: dict[str, Any] = {}
        resent: set[int] = set()

        def share() -> None:
            # shared objects go to every worker once, under keys of this map alone (hash=False: a later map's
            # equal object must not share a key that this one is releasing)
            sent.clear()
            sent.update({k: client.scatter(v, broadcast=True, hash=False) for k, v in shared.items()})

        def top_up() -> None:
            # one case per worker thread in flight: a worker holds only the case it runs (a dead worker loses
            # that one), and a cohort of thousands is not sent to the scheduler at once
            slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
            while pending and sum(not f.done() for f in futures) < slots:
                i, item = pending.pop(0)
                fut = client.submit(_on_worker, fn, item, gpu, dict(sent), self.threads_per_worker,
                                    key=f"{prefix}-{run}-{i}-{len(resent)}", pure=False)
                futures[fut] = (i, item)
                queue.add(fut)

        try:
            share()
            top_up()
            for fut in queue:
                i, item = futures[fut]
                try:
                    done[item] = fut.result()
                except Exception as exc:  # the case's own error, or KilledWorker when its worker died
                    if "lost dependencies" in str(exc) and i not in resent:
                        # a worker that died held the only copy of a shared object: send them again, redo the case
                        resent.add(i)
                        share()
                        pending.insert(0, (i, item))
                        top_up()
                        continue
                    why = _describe(exc)
                    if type(exc).__name__ == "KilledWorker":
                        why = "its worker process died while running it (out of memory, or killed)"
                    errors[item] = why
                    bar.write(f"{desc}: {item} failed: {why.splitlines()[0]}", file=sys.stderr)
                bar.update()
                top_up()
        finally:
            client.cancel(list(futures))

    @contextlib.contextmanager
    def joblib(self) -> Iterator[None]:
        """joblib ``Parallel`` calls inside this block run on the Dask cluster (the classify / stratify grids); a
        serial executor leaves them to joblib's own processes."""
        if self.kind == "serial":
            yield
            return
        import joblib

        self.client()
        with joblib.parallel_config(backend="dask"):
            yield

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        for cluster in self._clusters:
            with contextlib.suppress(Exception):
                cluster.close()
        self._clients.clear()
        self._clusters.clear()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


SERIAL = Executor("serial")
