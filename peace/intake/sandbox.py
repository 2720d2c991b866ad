"""Read an untrusted model file in a separate, resource-limited process: what a server must do.

The explorer serves every user from one process, so a file that costs it memory, CPU time or a
crash would cost all of them. ``load_model_isolated`` runs ``importers.load_model`` in a child
process whose address space (beyond what its imports take), CPU time, written bytes and wall time
are limited. The child hands the checked weights back as a safetensors file; the parent reads it
with safetensors and checks the model again with ``from_state_dict``. A crash, a limit hit or a
timeout becomes a ``PeaceError`` naming the file; nothing the file says runs in the parent.

Each child reads one file and exits. Its interpreter and imports take ~1 s, so a server can start
the next file's child ahead (``prepare_reader``, e.g. while a user picks a file): it imports, then
waits for its one request, and its limits count from that request.
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
from dataclasses import asdict
from pathlib import Path

from peace.core.errors import PeaceError
from peace.intake.importers import NO_ACTIVATION, MissingActivation, from_state_dict
from peace.intake.model import ImportedModel, Limits

__all__ = ["load_model_isolated", "prepare_reader"]

_spare: subprocess.Popen | None = None  # a started child waiting for its file
_spare_lock = threading.Lock()


def _start_reader() -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "peace.intake.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def prepare_reader() -> None:
    """Start the child that will read the next file, if none is waiting (returns at once)."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare.poll() is not None:
            _spare = _start_reader()


def _take_reader() -> subprocess.Popen:
    global _spare
    with _spare_lock:
        proc, _spare = _spare, None
    return proc if proc is not None and proc.poll() is None else _start_reader()


@atexit.register
def _drop_spare() -> None:
    if _spare is not None and _spare.poll() is None:
        _spare.kill()
        _spare.wait()


def load_model_isolated(path: str | Path, config: dict | None = None, limits: Limits = Limits(),
                        memory_mib: int = 2048, cpu_s: int = 60, timeout_s: float = 120) -> ImportedModel:
    """``importers.load_model(path, config, limits)`` in a child process limited to ``memory_mib`` of
    extra address space, ``cpu_s`` of CPU time and ``timeout_s`` of wall time. A plain chain whose
    activation the config does not give raises ``MissingActivation`` carrying the chain read with the
    identity, so that a caller can tell the activation by data without a second child (~1 s)."""
    from safetensors.torch import load_file

    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="peace-sandbox-") as tmp:
        out = Path(tmp) / "model.safetensors"
        request = {"path": str(path), "config": config or {}, "limits": asdict(limits), "out": str(out),
                   "memory_mib": memory_mib, "cpu_s": cpu_s}
        proc = _take_reader()
        try:
            stdout, stderr = proc.communicate(json.dumps(request), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise PeaceError(f"{path}: reading the file took over {timeout_s:.0f} s and was stopped (a file made to "
                             f"exhaust the reader?)") from None
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            why = " (CPU time limit)" if name == "SIGXCPU" else ""
            raise PeaceError(f"{path}: the isolated reader was killed by {name}{why}; the file is malformed or made "
                             f"to attack the reader. Nothing was loaded.")
        try:
            reply = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = stderr.strip().splitlines()[-1:] or ["no output"]
            raise PeaceError(f"{path}: the isolated reader failed (exit {proc.returncode}: {tail[0][:200]})") from None
        if "error" in reply:
            raise PeaceError(reply["error"])
        params = load_file(str(out))
        m = from_state_dict(params, {**reply["spec"], "metadata": reply["metadata"]}, reply["source"], limits)
        if "missing_activation" in reply:
            raise MissingActivation(reply["missing_activation"], m)
        return m


def _child() -> None:
    """The child side: wait for the request, set the limits, read the file, write the weights, print
    one JSON line."""
    import math
    import resource

    from safetensors.torch import save_file

    from peace.intake.importers import load_model

    raw = sys.stdin.read()
    if not raw:  # the parent went away before sending a file
        return
    req = json.loads(raw)
    with open("/proc/self/statm") as f:  # address space the imports already take (pages)
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + req["memory_mib"] * 2**20,) * 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU the imports took does not count
    cpu = math.ceil(usage.ru_utime + usage.ru_stime) + req["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * req["limits"]["max_bytes"] + 2**20,) * 2)
    reply: dict = {}
    try:
        try:
            m = load_model(req["path"], req["config"], Limits(**req["limits"]))
        except PeaceError as e:  # a chain without its activation: read it as identity for the caller to tell
            if NO_ACTIVATION not in str(e) or "activation" in req["config"]:
                raise
            m = load_model(req["path"], {**req["config"], "activation": "identity"}, Limits(**req["limits"]))
            reply["missing_activation"] = str(e)
        save_file({k: v.contiguous() for k, v in m.params.items()}, req["out"])
        reply.update(spec=m.spec.to_dict(), metadata=m.metadata, source=m.source)
    except PeaceError as e:
        reply = {"error": str(e)}
    except MemoryError:
        reply = {"error": f"{req['path']}: reading it needs more than {req['memory_mib']} MiB; refused (raise the "
                          f"limit only for a file you trust)"}
    print(json.dumps(reply, default=str), flush=True)


if __name__ == "__main__":
    _child()
    os._exit(0)  # the reply is written and flushed; skipping the interpreter's teardown (torch's) saves ~0.3 s
