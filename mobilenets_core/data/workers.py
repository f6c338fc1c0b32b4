"""Decode and augment in worker processes, writing straight into shared memory.

The per-image work is decoding, cropping, resampling and NumPy; the libraries release the GIL only
while they decode and resample, so threads stopped scaling at about 1.2x on two cores. Processes
scale with cores. A pass (one epoch, one evaluation) gets a ring of batch slots in one shared-memory file;
each task is a chunk of rows of one slot: the worker reads the records (a file path, or encoded
bytes), decodes them with `preprocess.decode_example` and writes uint8 pixels into the slot, and
sends back only what the decode report counts. The calling process copies a finished slot out (a
uint8 memcpy) and hands it on; normalization to float happens on the device, in the engines' steps.

Nothing about the result depends on the workers: an example's augmentation comes from (seed, epoch,
index) and lands in its own row, so 1, 2 or 16 workers give the same bytes.

A worker is a `python -c` running `serve`, talking pickles over two pipes: it imports preprocess.py
and its image libraries only (no engine, no TensorFlow, not the caller's main script, which
multiprocessing's spawn would re-run), and it holds no copy of the parent's threads (a fork of a
process running JAX or MindSpore could deadlock). Workers ignore SIGINT and SIGTERM, which the
training process handles (preemption.py), and end when their pipe closes, however the parent ends.
A worker that dies is reported as one line naming its exit status, never as a hang.
"""
from __future__ import annotations

import atexit
import collections
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import traceback

import numpy as np

CHUNK_ROWS = 8  # rows per task: large enough to amortize the task round trip, small enough to balance
# Workers yield the CPU to the training step's threads: a worker preempting one of the step's
# parallel threads stalls all of them (a straggler); niced, the workers fill the step's idle time.
NICENESS = 10
_SHARED_DIRS = ("/dev/shm",)  # memory-backed where the OS has one; the temp dir otherwise


class WorkerDied(RuntimeError):
    """A worker process ended while tasks were assigned to it."""


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(configured: int | None = None) -> int:
    """MOBILENETS_DATA_WORKERS, else dataset.workers, else one per usable core (at most 32)."""
    from_env = os.environ.get("MOBILENETS_DATA_WORKERS")
    count = int(from_env) if from_env not in (None, "") else (configured or 0)
    return count if count > 0 else min(32, usable_cores())


# ----------------------------------------------------------------------------- in the calling process


class _Worker:
    def __init__(self):
        to_child, self._commands = os.pipe()
        self._replies, from_child = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from mobilenets_core.data.workers import serve; serve({to_child}, {from_child})"],
            pass_fds=(to_child, from_child), env=env, stdin=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self.send = os.fdopen(self._commands, "wb")
        self.receive = os.fdopen(self._replies, "rb")
        self.assigned = collections.deque()  # task ids, in the order the worker runs them

    def close(self):
        for stream in (self.send, self.receive):
            try:
                stream.close()
            except OSError:
                pass


class WorkerPool:
    """`count` worker processes; `submit` a task, `result` waits for it. Tasks go to the worker with
    the fewest waiting; each worker runs its tasks in order and replies in that order."""

    def __init__(self, count: int):
        self.count = count
        self._workers = [_Worker() for _ in range(count)]
        self._owner, self._done, self._abandoned = {}, {}, set()
        self._next = 0
        self._lock = threading.Lock()

    def submit(self, function: str, *args) -> int:
        with self._lock:
            worker = min(self._workers, key=lambda w: len(w.assigned))
            task, self._next = self._next, self._next + 1
            try:
                pickle.dump((task, function, args), worker.send, protocol=pickle.HIGHEST_PROTOCOL)
                worker.send.flush()
            except (BrokenPipeError, OSError):
                raise self._died(worker) from None
            worker.assigned.append(task)
            self._owner[task] = worker
            return task

    def result(self, task: int):
        with self._lock:
            while task not in self._done:
                worker = self._owner[task]
                try:
                    done, ok, payload = pickle.load(worker.receive)
                except (EOFError, OSError, pickle.UnpicklingError):
                    raise self._died(worker) from None
                worker.assigned.popleft()
                self._owner.pop(done)
                if done in self._abandoned:
                    self._abandoned.discard(done)
                else:
                    self._done[done] = (ok, payload)
            ok, payload = self._done.pop(task)
        if not ok:
            raise RuntimeError(f"a data worker failed:\n{payload}")
        return payload

    def abandon(self, tasks) -> None:
        """Tasks whose results nobody will ask for (a pass that stopped early); dropped on arrival."""
        with self._lock:
            for task in tasks:
                if task in self._done:
                    del self._done[task]
                elif task in self._owner:
                    self._abandoned.add(task)

    def _died(self, worker: _Worker) -> WorkerDied:
        status = worker.process.poll()
        if status is None:
            worker.process.kill()
            status = worker.process.wait()
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        return WorkerDied(f"a data worker process (pid {worker.process.pid}) ended unexpectedly ({how})")

    def close(self) -> None:
        for worker in self._workers:
            worker.close()  # the worker sees its pipe close and exits
        for worker in self._workers:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.process.kill()


_POOLS = {}  # worker count -> WorkerPool of this process


def pool(workers: int) -> WorkerPool:
    """The pool of `workers` processes, started on first use and kept for the life of the process;
    asking for another count ends the previous pool."""
    if workers not in _POOLS:
        forget_pool()
        _POOLS[workers] = WorkerPool(workers)
    return _POOLS[workers]


def forget_pool() -> None:
    """End the pool (after a worker died, or to change the count)."""
    for workers in list(_POOLS.values()):
        workers.close()
    _POOLS.clear()


def _ring_directory(size: int) -> str:
    """Memory-backed shared memory if it has room (a container's /dev/shm is often 64 MB: writing past
    it kills the writer with SIGBUS), else the temp dir, which the page cache keeps in memory too."""
    for directory in _SHARED_DIRS:
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            free = os.statvfs(directory)
            if free.f_bavail * free.f_frsize > 2 * size:
                return directory
    return tempfile.gettempdir()


_RING_PREFIX = "mobilenets-batches-"


def _remove_orphan_rings(directory: str) -> None:
    """Ring files of processes that no longer run (killed before they could unlink them)."""
    for name in os.listdir(directory):
        if not name.startswith(_RING_PREFIX):
            continue
        pid = name[len(_RING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc"):
            continue
        try:
            os.remove(os.path.join(directory, name))
        except OSError:
            pass


class SlotRing:
    """`slots` batch buffers of shape (rows, size, size, 3) uint8 in one shared-memory file."""

    def __init__(self, slots: int, rows: int, size: int):
        self.shape = (slots, rows, size, size, 3)
        nbytes = int(np.prod(self.shape))
        directory = _ring_directory(nbytes)
        _remove_orphan_rings(directory)
        fd, self.path = tempfile.mkstemp(prefix=f"{_RING_PREFIX}{os.getpid()}-", dir=directory)
        try:
            os.ftruncate(fd, nbytes)
            self._map = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        self.array = np.frombuffer(self._map, np.uint8).reshape(self.shape)

    def close(self) -> None:
        """Unlink the file; workers' mappings stay valid until they drop them."""
        self.array = None
        try:
            self._map.close()
        except BufferError:  # a view still exported: the mapping goes with it
            pass
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


# A finished pass hands its ring back; the next pass of the same shape takes it. Its pages are then
# already in memory and mapped by every worker: a fresh ring costs each worker a page fault (and the
# kernel a page of zeroing) per 4 KB it writes, about 18 per 224 px image.
_SPARE_RINGS = []
MAX_SPARE_RINGS = 2  # a training pass and an evaluation pass, alternating


def take_ring(slots: int, rows: int, size: int) -> SlotRing:
    shape = (slots, rows, size, size, 3)
    for ring in _SPARE_RINGS:
        if ring.shape == shape:
            _SPARE_RINGS.remove(ring)
            return ring
    return SlotRing(slots, rows, size)


def hand_back_ring(ring: SlotRing, writes_in_flight: bool) -> None:
    """The pass is done with `ring`. Kept for the next pass only if no task of this pass can still
    write into it (a pass that stopped early leaves tasks running: that ring is unlinked)."""
    if writes_in_flight:
        ring.close()
        return
    _SPARE_RINGS.append(ring)
    while len(_SPARE_RINGS) > MAX_SPARE_RINGS:
        _SPARE_RINGS.pop(0).close()


def close_spare_rings() -> None:
    while _SPARE_RINGS:
        _SPARE_RINGS.pop().close()


atexit.register(close_spare_rings)


# ----------------------------------------------------------------------------- in the worker

_MAPPED = {}  # path -> (mmap, array) of the rings this worker writes into


def _slot_array(path: str, shape: tuple) -> np.ndarray:
    if path not in _MAPPED:
        while len(_MAPPED) >= 4:  # a ring per pass; passes end: drop the oldest mappings
            mapped, view = _MAPPED.pop(next(iter(_MAPPED)))
            del view  # no export of the mapping may remain when it closes
            mapped.close()
        with open(path, "r+b") as f:
            mapped = mmap.mmap(f.fileno(), int(np.prod(shape)))
        _MAPPED[path] = (mapped, np.frombuffer(mapped, np.uint8).reshape(shape))
    return _MAPPED[path][1]


def decode_rows(path: str, shape: tuple, slot: int, rows: list, records: list, indices: list, options: dict) -> dict:
    """Decode `records` into rows `rows` of slot `slot` of the ring at `path`; returns the report's
    counts (preprocess.DecodeReport.counts)."""
    from mobilenets_core.data import preprocess

    target = _slot_array(path, shape)[slot]
    report = preprocess.DecodeReport()
    for row, record, index in zip(rows, records, indices):
        target[row] = preprocess.decode_example(record, index, report=report, **options)
    return report.counts()


TASKS = {"decode_rows": decode_rows}


def serve(commands: int, replies: int) -> None:
    """A worker's life: run each task read from `commands`, reply on `replies`, until the pipe closes."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    os.nice(NICENESS)
    with os.fdopen(commands, "rb") as incoming, os.fdopen(replies, "wb") as outgoing:
        while True:
            try:
                task, function, args = pickle.load(incoming)
            except EOFError:
                return
            try:
                reply = (task, True, TASKS[function](*args))
            except Exception:  # noqa: BLE001 - a bug in a worker is reported by the caller, with this traceback
                reply = (task, False, traceback.format_exc())
            try:
                pickle.dump(reply, outgoing, protocol=pickle.HIGHEST_PROTOCOL)
                outgoing.flush()
            except BrokenPipeError:
                return

