"""Read an untrusted model file in a separate, resource-limited process: what a server must do.

The explorer serves every user from one process, so a file that costs it memory, CPU time or a
crash would cost all of them. ``load_model_isolated`` runs ``importers.load_model`` in a child
process whose address space (beyond what its imports take), CPU time, written bytes and wall time
are limited. The child hands the checked weights back as a safetensors file; the parent reads it
with safetensors and checks the model again with ``from_state_dict``. A crash, a limit hit or a
timeout becomes a ``PeaceError`` naming the file; nothing the file says runs in the parent.

Each file gets its own child (or each batch of small files, ``load_models_isolated``), forked from a *zygote*:
a process started once that imported the reader (torch and all, 2-7 s) and then only forks, never reading a
file itself. A fork costs milliseconds, so reading a hundred files no longer costs a hundred interpreters; a
child that a file crashes or exhausts takes nothing with it. ``prepare_reader`` starts the zygote ahead (the
explorer does while a user picks a file). Requests are JSON lines on the zygote's stdin; each
names a fresh directory where its child writes the weights, its reply and its stderr, and where
the zygote writes the child's exit status once it has reaped it.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from peace.core.errors import PeaceError
from peace.intake.importers import NO_ACTIVATION, MissingActivation, from_state_dict
from peace.intake.model import ImportedModel, Limits

__all__ = ["load_model_isolated", "load_models_isolated", "prepare_reader"]

_zygote: subprocess.Popen | None = None
_zygote_owner = 0  # the pid that started it: a process forked from ours starts its own
_zygote_lock = threading.Lock()


def _reset_lock_in_child() -> None:  # a fork may copy the lock held by another thread of the parent
    global _zygote_lock
    _zygote_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _start_zygote() -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "peace.intake.sandbox"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env)  # its stderr: a failed import shows


def prepare_reader() -> None:
    """Start the process that forks the readers, if it is not running (returns at once)."""
    global _zygote, _zygote_owner
    with _zygote_lock:
        if _zygote is None or _zygote_owner != os.getpid() or _zygote.poll() is not None:
            _zygote, _zygote_owner = _start_zygote(), os.getpid()


def _send(request: dict) -> subprocess.Popen:
    """Hand ``request`` to the zygote (started if needed); the zygote it went to."""
    prepare_reader()
    with _zygote_lock:
        zygote = _zygote
        assert zygote is not None and zygote.stdin is not None
        try:
            zygote.stdin.write((json.dumps(request) + "\n").encode())
            zygote.stdin.flush()
        except BrokenPipeError:  # it died between the check and the write: the caller sees it exited
            pass
    return zygote


BATCH_FILES, BATCH_BYTES = 64, 32 * 2**20  # small files share a child: one fork per batch, not per file


def load_models_isolated(paths: Sequence[str | Path], config: dict | None = None, limits: Limits = Limits(),
                         workers: int | None = None) -> list[ImportedModel]:
    """``load_model_isolated`` for each of ``paths`` (in their order), ``workers`` children at a time (default:
    the CPU count). Small files are read in batches (up to ``BATCH_FILES`` files, ``BATCH_BYTES`` together) by
    one bounded child each, so a zoo of many checkpoints costs a fork per batch; a batch that crashes or times
    out is read again a file per child, to name the file. A progress bar shows on a terminal once there are
    many; the first file that fails raises."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    prepare_reader()  # one zygote for all the threads
    bar = tqdm(total=len(paths), desc="read model files", unit="file", disable=len(paths) < 50, leave=False)

    def read(batch: list[Path]) -> list[ImportedModel]:
        try:
            models = _load_batch(batch, config, limits)
        except _BatchFailed:
            models = [_load_batch([p], config, limits)[0] for p in batch]
        bar.update(len(batch))
        return models

    with bar, ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return [m for models in pool.map(read, _batches([Path(p) for p in paths])) for m in models]


def _batches(paths: list[Path]) -> list[list[Path]]:
    """Consecutive small files grouped up to ``BATCH_FILES`` / ``BATCH_BYTES``; a directory or a big file alone."""
    out: list[list[Path]] = []
    size = 0
    for p in paths:
        n = p.stat().st_size if p.is_file() else BATCH_BYTES
        if not out or len(out[-1]) >= BATCH_FILES or size + n > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return out


@atexit.register
def _drop_zygote() -> None:
    if _zygote is not None and _zygote_owner == os.getpid() and _zygote.poll() is None:
        _zygote.kill()
        _zygote.wait()


def _exit_status(folder: Path, zygote: subprocess.Popen, path: Path | str, timeout_s: float) -> int:
    """Wait for the reader of ``path`` to exit (its status, as ``Popen.returncode`` gives it)."""
    deadline = time.monotonic() + timeout_s
    status = folder / "status"
    while not status.exists():
        if zygote.poll() is not None:
            raise PeaceError(f"{path}: the isolated reader's parent process stopped (exit {zygote.returncode}) "
                             f"before answering; nothing was loaded. Try again (a fresh one starts)")
        if time.monotonic() > deadline:
            _send({"kill": str(folder)})
            for _ in range(1000):  # the zygote reaps it within milliseconds; then nothing writes in the folder
                if status.exists() or zygote.poll() is not None:
                    break
                time.sleep(0.005)
            raise _BatchFailed(f"{path}: reading the file took over {timeout_s:.0f} s and was stopped (a file made to "
                               f"exhaust the reader?)")
        time.sleep(0.005)
    return int(status.read_text())


class _BatchFailed(PeaceError):
    """A batch's child crashed, hit a limit or timed out: which of its files did it is not known."""


def load_model_isolated(path: str | Path, config: dict | None = None, limits: Limits = Limits(),
                        memory_mib: int = 2048, cpu_s: int = 60, timeout_s: float = 120) -> ImportedModel:
    """``importers.load_model(path, config, limits)`` in a child process limited to ``memory_mib`` of
    extra address space, ``cpu_s`` of CPU time and ``timeout_s`` of wall time. A plain chain whose
    activation the config does not give raises ``MissingActivation`` carrying the chain read with the
    identity, so that a caller can tell the activation by data without a second child."""
    try:
        return _load_batch([Path(path)], config, limits, memory_mib, cpu_s, timeout_s)[0]
    except _BatchFailed as e:
        raise PeaceError(str(e)) from None


def _load_batch(paths: list[Path], config: dict | None, limits: Limits, memory_mib: int = 2048, cpu_s: int = 60,
                timeout_s: float = 120) -> list[ImportedModel]:
    """``paths`` read in order by one child (limits: ``memory_mib`` at a time, ``cpu_s`` and ``timeout_s`` per
    file); the first file that fails raises its error."""
    from safetensors.torch import load_file

    paths = [p.resolve() for p in paths]
    name = paths[0] if len(paths) == 1 else f"{paths[0]} (one of {len(paths)} files read together)"
    with tempfile.TemporaryDirectory(prefix="peace-sandbox-") as tmp:
        folder = Path(tmp)
        request = {"paths": [str(p) for p in paths], "config": config or {}, "limits": asdict(limits), "dir": tmp,
                   "memory_mib": memory_mib, "cpu_s": cpu_s * len(paths)}
        code = _exit_status(folder, _send(request), name, timeout_s * len(paths))
        if code < 0:
            sig = signal.Signals(-code).name
            why = " (CPU time limit)" if sig == "SIGXCPU" else ""
            raise _BatchFailed(f"{name}: the isolated reader was killed by {sig}{why}; the file is malformed or made "
                               f"to attack the reader. Nothing was loaded.")
        try:
            replies = json.loads((folder / "reply.json").read_text())
        except (OSError, ValueError):
            tail = (folder / "stderr").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise _BatchFailed(f"{name}: the isolated reader failed (exit {code}: {tail[0][:200]})") from None
        models = []
        for i, reply in enumerate(replies):
            if "error" in reply:
                raise PeaceError(reply["error"])
            params = load_file(str(folder / f"{i}.safetensors"))
            m = from_state_dict(params, {**reply["spec"], "metadata": reply["metadata"]}, reply["source"], limits)
            if "missing_activation" in reply:
                raise MissingActivation(reply["missing_activation"], m)
            models.append(m)
        return models


def _read(req: dict) -> None:
    """In a forked child: set the limits, read the files in order (until one fails), write each one's weights
    and one JSON list of replies."""
    import math
    import resource

    import torch

    folder = Path(req["dir"])
    err = os.open(folder / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 1)
    os.dup2(err, 2)
    torch.set_num_threads(1)  # a file read needs no thread pool (whose stacks would count against the limit)
    with open("/proc/self/statm") as f:  # address space the imports already take (pages)
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + req["memory_mib"] * 2**20,) * 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # a forked child starts from zero; counted to be sure
    cpu = math.ceil(usage.ru_utime + usage.ru_stime) + req["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * req["limits"]["max_bytes"] + 2**20,) * 2)
    replies = []
    for i, path in enumerate(req["paths"]):  # in order, until one fails
        replies.append(_read_one(req, path, folder / f"{i}.safetensors"))
        if "error" in replies[-1] or "missing_activation" in replies[-1]:
            break
    (folder / "reply.json").write_text(json.dumps(replies, default=str))


def _read_one(req: dict, path: str, out: Path) -> dict:
    """In the child: one file read, its weights written to ``out``; the reply about it."""
    from safetensors.torch import save_file

    from peace.intake.importers import load_model

    reply: dict = {}
    try:
        try:
            m = load_model(path, req["config"], Limits(**req["limits"]))
        except PeaceError as e:  # a chain without its activation: read it as identity for the caller to tell
            if NO_ACTIVATION not in str(e) or "activation" in req["config"]:
                raise
            m = load_model(path, {**req["config"], "activation": "identity"}, Limits(**req["limits"]))
            reply["missing_activation"] = str(e)
        save_file({k: v.contiguous() for k, v in m.params.items()}, str(out))
        reply.update(spec=m.spec.to_dict(), metadata=m.metadata, source=m.source)
    except PeaceError as e:
        reply = {"error": str(e)}
    except MemoryError:
        reply = {"error": f"{path}: reading it needs more than {req['memory_mib']} MiB; refused (raise the "
                          f"limit only for a file you trust)"}
    return reply


def _fork_reader(req: dict) -> int:
    """Fork the child that reads ``req``'s file; its pid (in the zygote)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _read(req)
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit status and the stderr file
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)  # never back into the zygote's loop; no interpreter teardown
    return pid


def _zygote_loop() -> None:
    """The zygote: import the reader once, then fork one child per request line until stdin closes;
    reap the children and write each one's exit status beside its reply."""
    import importlib
    import select

    for module in ("torch", "safetensors.torch", "peace.intake.importers"):  # once here, inherited by every fork
        importlib.import_module(module)

    children: dict[int, Path] = {}
    buffered = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.005 if children else None)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the parent went away: nobody will read what the children write
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                req = json.loads(line)
                if "kill" in req:  # a timeout: the child is unreaped, so its pid is still its own
                    for pid in [p for p, d in children.items() if str(d) == req["kill"]]:
                        os.kill(pid, signal.SIGKILL)
                elif os.path.isdir(req["dir"]):  # else its caller gave up before it was forked
                    children[_fork_reader(req)] = Path(req["dir"])
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            folder = children.pop(pid)
            try:
                (folder / "status.new").write_text(str(os.waitstatus_to_exitcode(status)))
                os.replace(folder / "status.new", folder / "status")
            except OSError:  # the caller gave up and removed the folder
                pass


if __name__ == "__main__":
    _zygote_loop()
    os._exit(0)
