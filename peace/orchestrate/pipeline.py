"""``peace pipeline``: the notebooks run in order with papermill, each step skipped when current.

Steps: build zoo (01) -> train encoder (02) -> export embeddings (03) -> evaluate (04). Each step
writes a stamp (``.pipeline-step.json``) beside its outputs with its parameters and the checksums of
its inputs; it is current when its outputs exist and the stamp still matches. A stale output
directory that the pipeline made (it has a stamp) is replaced; one without a stamp (an interrupted
step) is resumed. Zoos are never deleted. Executed notebooks
are kept under ``<root>/notebooks/<name>/``. A failing step names the notebook and the cell, and
leaves the outputs of earlier steps untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peace.core.atomic import read_json_or_none, write_json
from peace.core.errors import PeaceError, unknown
from peace.core.paths import replacing, safe_name
from peace.learn.run import RunDir
from peace.orchestrate.estimate import REFERENCE_MINUTES, TIMINGS, describe, plan

__all__ = [
    "NOTEBOOKS", "STAMP", "Step", "check_parameters_cell", "evaluate_step", "notebook_path", "pipeline_steps",
    "run_notebook", "run_pipeline", "run_steps", "train_step"
]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STAMP = ".pipeline-step.json"


def notebook_path(name: str, notebooks: Path | None = None) -> Path:
    path = (notebooks or NOTEBOOKS) / name
    if not path.is_file():
        raise PeaceError(f"notebook {path} not found; the pipeline runs the notebooks of a PEACE source checkout")
    return path


def check_parameters_cell(path: Path, needed: Sequence[str]) -> None:
    """Refuse a notebook without a papermill ``parameters`` cell defining every ``needed`` name."""
    # the notebook's JSON as it is: nbformat would cost 2.7 s of imports (jsonschema) on 2 cores, every time
    # the pipeline is run to find its steps current
    try:
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PeaceError(f"{path} is not a Jupyter notebook ({type(e).__name__}: {e}); restore it from the "
                         f"PEACE checkout (git checkout -- {path.name})") from None
    if not cells:
        raise PeaceError(f"{path} has no cell tagged 'parameters'; papermill needs one (add the tag to the cell that "
                         f"sets {', '.join(needed)})")
    src = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    missing = [n for n in needed if not any(line.split("=")[0].strip() == n for line in src.splitlines())]
    if missing:
        raise PeaceError(f"the parameters cell of {path} does not define {missing}")


def run_notebook(path: Path, out_nb: Path, parameters: dict, stream: bool = False) -> None:
    """Execute one notebook with papermill; a failure becomes a PeaceError naming the cell.
    ``stream`` copies its cells' stderr (progress bars, stage lines) to this terminal as they run."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    check_parameters_cell(path, list(parameters))
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    try:
        streams = {"stderr_file": sys.stderr} if stream else {}  # progress bars and stage lines, not cell prints
        # a library imported in the kernel pulls tqdm.auto, which warns that ipywidgets is missing: noise here
        quiet = "ignore:IProgress not found"
        if quiet not in os.environ.get("PYTHONWARNINGS", ""):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
        # the kernel's own log is not the user's business: at every start it said that it talks over local TCP
        # unencrypted. A cell's error still arrives through papermill (PapermillExecutionError) and a dead kernel
        # through nbclient. Once every cell has run the kernel is stopped at once ("immediate"), not asked to
        # finalize: a graceful shutdown was interrupted by jupyter_client ("KeyboardInterrupt caught in kernel"
        # at ERROR) and, under load, its teardown now and then aborted inside libdgl, whose LIBXSMM then printed
        # its statistics and the kernel's command line on this terminal. The notebooks' outputs are written by
        # then, and an isolated reader's zygote ends when its stdin closes.
        pm.execute_notebook(str(path), str(out_nb), parameters=parameters, kernel_name="python3",
                            cwd=str(path.parent), progress_bar=False, shutdown_kernel="immediate",
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"], **streams)
    except PapermillExecutionError as e:
        raise PeaceError(f"{path.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); the executed notebook "
                         f"with the full traceback is {out_nb}. Outputs of earlier steps are kept.") from None


@dataclass
class Step:
    """One notebook run: its parameters, the files that show it finished, and what it reads."""

    name: str
    notebook: str
    parameters: dict
    outputs: list[Path]  # all must exist; the stamp lives beside the first
    inputs: Callable[[], dict[str, str]] = field(default=lambda: {})  # checksums of what it reads, taken at run time
    owns_dir: bool = True  # a stale output directory that this step made is replaced (never a zoo)
    keeps: tuple[str, ...] = ()  # files other commands put in its directory, carried over when it is replaced

    @property
    def stamp(self) -> Path:
        return self.outputs[0].parent / STAMP

    def record(self) -> dict:
        return {"step": self.name, "parameters": self.parameters, "inputs": self.inputs()}

    def only_opens(self) -> bool:
        """Whether running it (forced) would only open its output: it never replaces it (a zoo) and it is current."""
        return not self.owns_dir and self.is_current()

    def is_current(self) -> bool:
        if not all(p.exists() for p in self.outputs):
            return False
        try:
            return read_json_or_none(self.stamp) == json.loads(json.dumps(self.record(), default=str))
        except OSError:  # an input is missing or unreadable: run again
            return False


def _zoo_sha(zoo: Path) -> dict[str, str]:
    info = read_json_or_none(zoo / "zoo.json") or {}
    return {"zoo_manifest": info.get("manifest_sha256", "missing")}


def _encoder_sha(run: Path) -> dict[str, str]:
    return {"encoder": RunDir(run).encoder_sha256()}


def train_step(zoo: Path, config: str, overrides: Sequence[str], device: str, seed: int, run: Path) -> Step:
    """Notebook 02: train an encoder on ``zoo`` into ``run`` (current while the zoo is unchanged)."""
    return Step("train encoder", "02_train_encoder.ipynb",
                {"zoo_dir": str(zoo), "config": config, "overrides": list(overrides), "device": device, "seed": seed,
                 "out": str(run), "resume": True},
                [run / RunDir.ENCODER, run / RunDir.HISTORY], lambda: _zoo_sha(zoo), keeps=RunDir.DECODER)


def evaluate_step(zoo: Path, run: Path, out: Path, seed: int, transfer_epochs: int, accuracy_epochs: int = 100) -> Step:
    """Notebook 04: evaluate ``run`` into ``out`` (current while zoo and encoder are unchanged)."""
    return Step("evaluate", "04_evaluate.ipynb",
                {"run_dir": str(run), "out": str(out), "seed": seed, "transfer_epochs": transfer_epochs,
                 "accuracy_epochs": accuracy_epochs},
                [out / "metrics.json"], lambda: {**_zoo_sha(zoo), **_encoder_sha(run)})


def pipeline_steps(preset: str = "demo", config: str | None = None, overrides: Sequence[str] = (),
                   device: str = "auto", seed: int = 0, root: str | Path = "artifacts", name: str | None = None,
                   transfer_epochs: int = 20) -> list[Step]:
    """The four steps for zoo ``preset`` and encoder ``config`` (default: the one the preset names),
    writing under ``root``. Unknown names, and a config whose training split the zoo cannot fill, fail
    here, before anything runs."""
    from peace.learn.runconfig import load_config
    from peace.zoo.recipe import load_recipe

    recipe = load_recipe(preset)
    if config is None:  # the preset's own config, with its overrides before the user's
        config, overrides = recipe.encoder_config, [*recipe.encoder_set, *overrides]
    cfg = load_config(config, list(overrides))
    root = Path(root).resolve()
    name = safe_name(name or preset, "--name")
    zoo, run = root / "zoos" / preset, root / "runs" / name
    if not (zoo / "zoo.json").exists():
        _check_plan(recipe, config, cfg)
    emb, ev = root / "embeddings" / name, root / "evaluation" / name
    return [
        Step("build zoo", "01_build_zoo.ipynb", {"preset": preset, "out": str(zoo)}, [zoo / "zoo.json"],
             owns_dir=False),
        train_step(zoo, config, overrides, device, seed, run),
        Step("export embeddings", "03_export_embeddings.ipynb", {"run_dir": str(run), "out": str(emb)},
             [emb / "index.json"], lambda: {**_zoo_sha(zoo), **_encoder_sha(run)}),
        evaluate_step(zoo, run, ev, seed, transfer_epochs),
    ]


def _check_plan(recipe, config: str, cfg) -> None:
    """Refuse, before the zoo is built, an encoder config whose splits of the planned zoo are too small."""
    from peace.learn.trainer import check_fits
    from peace.zoo.recipe import planned_models

    try:
        check_fits(planned_models(recipe), cfg)
    except PeaceError as e:
        raise PeaceError(f"preset {recipe.name!r} with encoder config {config!r}: {e} (found on the zoo's plan, "
                         f"before building it; the preset's own config is {recipe.encoder_config!r})") from None


def _carry(s: Step, old: Path | None, progress: bool) -> None:
    """Copy the files of ``s.keeps`` from the replaced directory ``old`` into the rebuilt one (a run's
    decoder: minutes of work; one trained on another encoder is refused by name when used, never lost)."""
    kept = [n for n in s.keeps if old is not None and (old / n).exists() and not (s.stamp.parent / n).exists()]
    for name in kept:
        shutil.copy2(old / name, s.stamp.parent / name)
    if kept and progress:
        print(f"[peace]     kept {', '.join(kept)} from the replaced {s.stamp.parent.name} (refused if it no longer "
              f"matches the new outputs; rebuild it then)", flush=True)


def run_steps(steps: Sequence[Step], notebooks_out: Path, force: bool = False, progress: bool = True,
              notebooks: Path | None = None, reference: dict | None = None, stream: bool | None = None,
              root: Path | None = None) -> list[str]:
    """Run the steps that are not current, in order; returns each step's outcome ("ran" / "current").
    With ``progress`` it says first what will run and for how long, and (``stream``, default: the same)
    shows each notebook's own progress bars as they run. A stale step directory is replaced only inside
    ``root`` (default: the parent of ``notebooks_out``), the tree this run owns, and comes back if its step fails."""
    root = Path(root if root is not None else notebooks_out.parent)
    paths = [notebook_path(s.notebook, notebooks) for s in steps]
    for s, p in zip(steps, paths):  # every notebook checked before the first one runs
        check_parameters_cell(p, list(s.parameters))
    timings = read_json_or_none(notebooks_out / TIMINGS) or {}
    if progress:
        runs = [force or not s.is_current() for s in steps]  # later steps may turn current once earlier ones ran
        opens = [force and s.only_opens() for s in steps]
        print(plan(steps, runs, timings, reference or {}, opens), flush=True)
    outcome, start = [], time.perf_counter()
    for i, (s, path) in enumerate(zip(steps, paths), 1):
        if not force and s.is_current():  # checked now: the steps before may have just rewritten its inputs
            outcome.append("current")
            continue
        if progress:
            print(f"[peace] {i}/{len(steps)} {s.name}: running {s.notebook} ...", flush=True)
        t0 = time.perf_counter()
        reopens = s.only_opens()  # forced, it opens its output: not the step's build time
        stale = s.owns_dir and read_json_or_none(s.stamp) is not None
        if stale and progress:  # made by an earlier run with other parameters or inputs: replace, do not resume it
            print(f"[peace]     {s.stamp.parent} is stale (parameters or inputs changed); rebuilding it (the old "
                  f"one is kept until the new one is complete)", flush=True)
        with replacing(s.stamp.parent, root) if stale else contextlib.nullcontext() as old:
            s.stamp.unlink(missing_ok=True)
            try:
                run_notebook(path, notebooks_out / s.notebook, s.parameters, progress if stream is None else stream)
            except PeaceError as e:
                raise PeaceError(f"step {i}/{len(steps)} ({s.name}): {e}") from None
            missing = [str(p) for p in s.outputs if not p.exists()]
            if missing:
                raise PeaceError(f"step {s.name}: {s.notebook} ran but did not write {missing}")
            _carry(s, old, progress)
        write_json(s.stamp, s.record())
        outcome.append("ran")
        took = time.perf_counter() - t0
        if not reopens:
            timings[s.name] = took
            write_json(notebooks_out / TIMINGS, timings)
        if progress:
            print(f"[peace] {i}/{len(steps)} {s.name}: done in {describe(took)}; outputs in "
                  f"{s.outputs[0].parent}", flush=True)
    if progress and "ran" in outcome:
        print(f"[peace] {outcome.count('ran')} step(s) done in {describe(time.perf_counter() - start)}", flush=True)
    return outcome


def run_pipeline(preset: str = "demo", config: str | None = None, overrides: Sequence[str] = (), device: str = "auto",
                 seed: int = 0, root: str | Path = "artifacts", name: str | None = None, force: bool = False,
                 steps: Sequence[str] | None = None, transfer_epochs: int = 20, progress: bool = True) -> list[str]:
    """Build, train, export and evaluate for one preset; only what is missing or stale runs."""
    all_steps = pipeline_steps(preset, config, overrides, device, seed, root, name, transfer_epochs)
    if progress:
        train = all_steps[1].parameters
        print(f"[peace] encoder config {' '.join([train['config'], *train['overrides']])}: " +
              ("given with --config" if config else f"preset {preset}'s own (--config NAME trains another)"), flush=True)
    if steps is not None:
        names = [s.name for s in all_steps]
        for s in steps:
            if s not in names:
                raise unknown("pipeline step", s, names)
        all_steps = [s for s in all_steps if s.name in steps]
    root = Path(root).resolve()
    return run_steps(all_steps, root / "notebooks" / (name or preset), force, progress,
                     reference=REFERENCE_MINUTES.get(preset, {}), root=root)
