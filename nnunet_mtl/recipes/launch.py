"""Running a recipe's steps through submitit: each step is one command (the line ``--dry-run`` prints), run by
:func:`run_step` inside a submitit job with the recipe's environment, its output in ``W/logs/STEP.log``.

- ``--launcher local``: submitit's LocalExecutor, one job at a time, each waited for (with ``timeout_min`` set:
  submitit's local default would kill a job after 2 minutes), in the plan's order except that each model is scored
  as soon as it is trained (:func:`~nnunet_mtl.recipes.plan.local_order`). With ``--gpus 0,1,...`` the
  trainings (and then the predictions) run one per GPU at a time, each with its own ``CUDA_VISIBLE_DEVICES``.
- ``--launcher slurm``: submitit's SLURM executor; every step not yet done is submitted at once, each with
  ``--dependency=afterok:`` on the jobs of the steps it waits for (and ``--kill-on-invalid-dep=yes``, so that a
  failed training cancels what follows it instead of leaving it pending), so prediction, evaluation, comparison and
  the report follow the trainings on the cluster. The job ids go to ``W/slurm/jobs.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.recipes.plan import (NOT_NEEDED, Context, Step, check_provenance, executable, fingerprints,
                                     local_order, not_needed, selected, step_state)
from nnunet_mtl.recipes.schema import Recipe


def run_step(argv: list[str], env: dict, log_path: str, whole: bool = False, provenance: tuple | None = None) -> int:
    """Run one step's command, appending its output to ``log_path``; its exit code. (What a submitit job calls.)
    On a SLURM node ``env`` holds only the recipe's variables (:meth:`Context.env`), set on top of the node's own
    environment, whose CUDA_VISIBLE_DEVICES and SLURM_* stay as SLURM set them. A local job gets the ``whole``
    environment of the command that launched it (with the GPU it is given, or none for a CPU step), not the
    CUDA_VISIBLE_DEVICES submitit's local executor sets from its gpus_per_node. ``provenance`` (path, record): written
    when the command succeeded, in the job itself, so that a SLURM step records what made it even when nobody
    waits for it (:func:`nnunet_mtl.recipes.plan.check_provenance`)."""
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(argv)}\n# started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        code = _run_as_group(argv, env if whole else {**os.environ, **env}, f)
    if code == 0 and provenance is not None:
        from nnunet_mtl.recipes.plan import write_provenance
        write_provenance(Path(provenance[0]), provenance[1])
    return code


def _die_with_parent() -> None:
    """In the step's command, before it starts (Linux): SIGKILL when the job process that started it dies, so that
    a job killed outright (submitit's local executor sends SIGKILL one second after SIGINT) leaves no command
    running behind it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the SIGINT / SIGTERM handler below still stops the group
        pass


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):  # the whole group has ended
        pass


def _stop_group(child: subprocess.Popen, grace: float = 0.3) -> None:
    """SIGTERM to the command's whole process group (a training's data-loader workers too), then SIGKILL to what
    is left of the group after ``grace`` seconds (inside the one second submitit's local executor gives a job
    between SIGINT and SIGKILL), then reap the command."""
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(child, signal.SIGKILL)  # also when the command has ended and left processes of its own
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _run_as_group(argv: list[str], env: dict, out) -> int:
    """The command in its own session (its own process group), waited for. A cancelled job (SIGTERM from the local
    launcher's cancel through submitit's controller, from SLURM or a user; SIGINT from submitit's own cancel or
    its time limit, or Ctrl-C) stops the whole group before the job ends, instead of leaving the command running
    on: a training cancelled after another failed must not go on writing. The handlers are in place before the
    command starts (submitit's job process ignores SIGTERM until then: a cancel in between would be lost)."""
    linux = sys.platform.startswith("linux")
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {}
    child = None

    def stop(signum, frame):
        if child is not None:
            _signal_group(child, signal.SIGTERM)  # at once; the rest (waiting, reaping) outside the handler
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_die_with_parent if linux else None)
        return child.wait()
    except BaseException:
        for sig in previous:  # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        if child is not None:  # (a command cut off while it started dies with this process: _die_with_parent)
            _stop_group(child)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Progress:
    """One line per step over the whole grid: ``[7/19] train:mtl:0 train multitask, fold 0 ... done in 41 s``."""
    total: int
    started: float = 0.0
    index: int = 0

    def __post_init__(self):
        self.started = time.time()

    def begin(self, step: Step, note: str = "") -> None:
        self.index += 1
        print(f"[{self.index}/{self.total}] {step.id}: {step.title}{note}", flush=True)

    def elapsed(self) -> str:
        return f"{(time.time() - self.started) / 60:.1f} min"


def record(ctx: Context, step: Step, seconds: float, status: str) -> None:
    """Append to W/logs/steps.jsonl (the report's wall times)."""
    path = ctx.workdir / "logs" / "steps.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step.id, "kind": step.kind, "seconds": round(seconds, 1), "status": status,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def pending(steps: list[Step], recipe: Recipe, ctx: Context, adopt: bool = True,
            only: set[str] | None = None) -> tuple[list[Step], dict]:
    """The steps to run (not done, and needed: :func:`not_needed`) and, for every other one, the file that shows it
    done or why it need not run (starting with ``NOT_NEEDED``); the done steps' provenance checked against the recipe
    as it is now (refused on a mismatch, recorded where missing unless ``adopt`` is False: the dry run). ``only``
    (``--only``: :func:`~nnunet_mtl.recipes.plan.select`'s ids) keeps both answers to those steps; what is done or
    needed is judged on the whole plan all the same, so a selected training whose results are all there stays
    not needed."""
    done = {}
    for step in steps:
        finished, why = step_state(step, recipe, ctx)
        if finished:
            done[step.id] = why
    adopted = check_provenance(steps, done, ctx, adopt=adopt)
    if adopted:
        print(f"note: recorded the provenance of {adopted} step(s) done before records existed "
              f"({ctx.workdir / 'logs' / 'provenance'})", flush=True)
    done.update(not_needed(steps, done))  # after the provenance: these have no outputs to record
    if only is not None:
        done = {sid: why for sid, why in done.items() if sid in only}
    return [step for step in selected(steps, only) if step.id not in done], done


def _provenance(step: Step, prints: dict, ctx: Context) -> tuple[str, dict]:
    return str(ctx.provenance(step.id)), prints[step.id]


# ------------------------------------------------------------------------------------------------ local
def _local_executor(ctx: Context):
    import submitit
    return submitit.LocalExecutor(folder=str(ctx.workdir / "submitit" / "%j"))


PROGRESS_EVERY_S = 20.0
# the first look at a job after FIRST_POLL_S, then less and less often (a tenth of the time it has run, at most every
# PROGRESS_EVERY_S): most of a recipe's steps (evaluations, comparisons, small predictions) end within seconds, and
# each second of polling slack is a second every such step waits for nothing
FIRST_POLL_S = 0.1


def last_progress(log: Path) -> str | None:
    """The newest progress line of a step's log: nnU-Net's ``Epoch N`` with the epoch's losses and time, or our
    ``fold i/k`` lines of a per-fold prediction; None when there is none yet."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    # this run's output only: a rerun (--c) appends to the log after a "$ command" line
    lines = lines[max((i for i, ln in enumerate(lines) if ln.startswith("$ ")), default=-1) + 1:][-200:]
    epoch = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].split(": ", 1)[-1].startswith("Epoch ")), None)
    if epoch is not None:
        after = [ln.split(": ", 1)[-1] for ln in lines[epoch + 1:] if ": " in ln]
        detail = [a for a in after if a.startswith(("train_loss", "Pseudo dice", "Epoch time"))]
        return "; ".join([lines[epoch].split(": ", 1)[-1], *detail])
    folds = [ln for ln in lines if ln.startswith("fold ") and ": " in ln]
    return folds[-1] if folds else None


def _wait(job, step: Step, ctx: Context, started: float) -> None:
    """Wait for the job, printing the step's progress (its log's newest epoch) when it changes."""
    shown = None
    while not job.done():
        time.sleep(min(PROGRESS_EVERY_S, FIRST_POLL_S + (time.time() - started) / 10))
        line = last_progress(ctx.log(step.id))
        if line and line != shown:
            print(f"    {line} ({time.time() - started:.0f} s)", flush=True)
            shown = line
    _result(job, step, ctx, started)


def _result(job, step: Step, ctx: Context, started: float) -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError
    try:
        code = job.result()
    except UncompletedJobError:
        record(ctx, step, time.time() - started, "timeout")
        raise NnunetMtlError(f"step {step.id} did not finish within {step.timeout_min} min (defaults.timeout_min or "
                             f"--timeout-min); its log: {ctx.log(step.id)}") from None
    except FailedJobError as e:
        record(ctx, step, time.time() - started, "failed")
        raise NnunetMtlError(f"step {step.id} failed in its job ({str(e).splitlines()[0]}); its log: "
                             f"{ctx.log(step.id)}") from None
    seconds = time.time() - started
    if code != 0:
        record(ctx, step, seconds, f"exit {code}")
        print(tail(ctx.log(step.id)), file=sys.stderr)
        raise NnunetMtlError(f"step {step.id} failed with exit code {code}: {step.command_line()} (the end of its "
                             f"log is above; all of it: {ctx.log(step.id)}); fix the cause and run the recipe again: "
                             f"finished steps are not redone")
    record(ctx, step, seconds, "done")
    print(f"    done in {seconds:.0f} s", flush=True)


CANCEL_WAIT_S = 10.0  # how long a cancel waits for the jobs to end before submitit's own cancel


def _cancel(jobs: list) -> None:
    """Cancel local jobs quietly and wait (at most CANCEL_WAIT_S) for them to end. submitit's ``cancel`` is a SIGINT
    to the job's controller (a process of its own that writes to this launcher's stderr), which ends there in a
    KeyboardInterrupt traceback. A SIGTERM instead is forwarded by the controller to the job, where
    :func:`run_step` stops the command's group and exits, and the controller then ends without a word. It is sent
    again each second while the controller lives: one that comes before the controller has started the job, or
    before the job has its handler, is lost. The controller is submitit's private ``_process`` (the controller
    itself as long as the executor has no ``setup`` lines, which would start it under a shell); without it, or
    when the wait runs out, submitit's own cancel."""
    alive = {}
    for job in jobs:
        process = getattr(job, "_process", None)
        if process is None:
            job.cancel(check=False)
        else:
            alive[job] = process
    deadline, sent = time.time() + CANCEL_WAIT_S, 0.0
    while alive and time.time() < deadline:
        if time.time() - sent >= 1.0:
            for process in alive.values():
                process.send_signal(signal.SIGTERM)  # (nothing happens to a process that has ended and been reaped)
            sent = time.time()
        time.sleep(0.05)
        alive = {job: process for job, process in alive.items() if process.poll() is None}
    for job in alive:
        job.cancel(check=False)


class _Held:
    """A SIGTERM that comes while a job is submitted: raised inside ``executor.submit`` once submitit has started the
    job, it would leave the job out of the list the cancel reads (running on unwatched); it waits until the job is
    in it (:func:`_submitting`)."""
    holding = False
    signum: int | None = None


def _raise_exit(signum, frame):
    if _Held.holding:
        _Held.signum = signum
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _submitting():
    """Around submitting a job and adding it to the running list: a SIGTERM meanwhile is raised after both (also
    when the submission failed: the run was asked to stop). Only in the main thread, where run_local sets its SIGTERM
    handler. SIGINT is not held: from a terminal it reaches submitit's controllers too (one process group), and a
    background launch ignores it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Held.signum = None
    _Held.holding = True
    try:
        yield
    except BaseException as e:
        if _Held.signum is not None:
            raise SystemExit(128 + _Held.signum) from e
        raise
    finally:
        _Held.holding = False
    if _Held.signum is not None:
        raise SystemExit(128 + _Held.signum)


def _submit(executor, step: Step, env: dict, ctx: Context, prints: dict, running: list):
    """Submit the step's :func:`run_step` job (its command, ``env``, its log, its provenance) and add it to
    ``running``, the list a cancel reads; a SIGTERM meanwhile waits until it is there (:func:`_submitting`)."""
    with _submitting():
        job = executor.submit(run_step, executable(step.argv), env, str(ctx.log(step.id)), True,
                              _provenance(step, prints, ctx))
        running.append(job)
    return job


def _ignore(signum, frame):
    pass


def run_local(steps: list[Step], recipe: Recipe, ctx: Context, gpus: list[int] | None = None,
              only: set[str] | None = None) -> None:
    """Run every step that is not done, in order (trainings and predictions one per GPU at a time with ``gpus``);
    with ``only`` (``--only``), those of its steps."""
    todo, done = pending(steps, recipe, ctx, only=only)
    shown = selected(steps, only)
    progress = Progress(len(shown))
    for step in shown:
        if step.id in done:
            why = done[step.id]
            progress.begin(step, f" ... {why}" if why.startswith(NOT_NEEDED) else f" ... done before ({why})")
    executor = _local_executor(ctx)
    env = {**os.environ, **ctx.env()}
    prints = fingerprints(steps, ctx)
    running: list = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, a closing session) ends this process without Python's cleanup, which would leave
        # submitit's local job, and the training in it, running on unwatched: raised instead, so its jobs are cancelled
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_exit)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # started in the background (`nohup ... &` ignores SIGINT): submitit's local jobs would inherit the
            # ignored SIGINT, and submitit's own cancel (our fallback, see _cancel) and its time limit are a SIGINT,
            # so a cancelled training went on (seen in a breast_seeds run). A handler that ignores it here too is not
            # inherited: the jobs start with the default, as from a terminal
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _ignore)
    try:
        remaining = list(todo) if gpus else local_order(todo)
        while remaining:
            step = remaining[0]
            if gpus and step.gpu:
                # every GPU step of this kind at once (the steps in between, e.g. an evaluation after each
                # prediction, only wait for them), then the rest in order
                wave = [s for s in remaining if s.kind == step.kind and s.gpu]
                _run_wave(wave, executor, env, ctx, progress, gpus, running, prints)
                remaining = [s for s in remaining if s not in wave]
                continue
            remaining.pop(0)
            progress.begin(step)
            executor.update_parameters(timeout_min=step.timeout_min, gpus_per_node=0)
            started = time.time()
            job = _submit(executor, step, {**env, **step.env}, ctx, prints, running)
            _wait(job, step, ctx, started)
            running.remove(job)
    except BaseException as e:  # interrupted, or a step failed while others ran on other GPUs
        alive = [job for job in running if not job.done()]  # not the step that failed: it has ended
        _cancel(alive)  # submitit's local jobs outlive this process unless cancelled
        if alive and isinstance(e, SystemExit):
            print(f"stopped by a signal: cancelled the {len(alive)} step(s) under way (a training continues from its "
                  f"latest checkpoint on the next run)", file=sys.stderr, flush=True)
        elif alive and not isinstance(e, KeyboardInterrupt):
            print(f"cancelled {len(alive)} other step(s) still running (a training continues from its latest "
                  f"checkpoint on the next run)", file=sys.stderr, flush=True)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"all {len(shown)} steps{' (--only)' if only is not None else ''} done ({len(todo)} run now, {len(done)} "
          f"before) in {progress.elapsed()}")


def _run_wave(wave: list[Step], executor, env: dict, ctx: Context, progress: Progress, gpus: list[int],
              running: list, prints: dict) -> None:
    """Steps of one kind (independent of each other: all trainings, or all predictions), at most one per GPU."""
    queue, busy = list(wave), {}
    while queue or busy:
        for gpu in gpus:
            if gpu not in busy and queue:
                step = queue.pop(0)
                progress.begin(step, f" (GPU {gpu})")
                executor.update_parameters(timeout_min=step.timeout_min, gpus_per_node=1, visible_gpus=[gpu])
                job = _submit(executor, step, {**env, **step.env, "CUDA_VISIBLE_DEVICES": str(gpu)}, ctx, prints,
                              running)
                busy[gpu] = (job, step, time.time())
        for gpu, (job, step, started) in list(busy.items()):
            if job.done():
                del busy[gpu]
                running.remove(job)
                _result(job, step, ctx, started)
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ SLURM
@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus: int = 8
    mem_gb: int | None = None
    setup: tuple = ()          # shell lines run before each job (module load ..., source venv/bin/activate)


def slurm_parameters(step: Step, recipe: Recipe, dependencies: list[str], options: SlurmOptions) -> dict:
    """submitit's update_parameters for one step: what sbatch gets (tests check them in the submission file)."""
    params = {"name": f"{recipe.name}:{step.id}", "timeout_min": int(step.timeout_min),
              "cpus_per_task": options.cpus if step.kind in ("train", "predict", "ablate", "plan")
              else min(options.cpus, 4),
              "nodes": 1, "tasks_per_node": 1,
              "slurm_additional_parameters": ({"dependency": "afterok:" + ":".join(dependencies),
                                               "kill-on-invalid-dep": "yes"} if dependencies else {})}
    if step.gpu:
        params["gpus_per_node"] = 1
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.account:
        params["slurm_account"] = options.account
    if options.qos:
        params["slurm_qos"] = options.qos
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    return params


def submit_slurm(steps: list[Step], recipe: Recipe, ctx: Context, options: SlurmOptions,
                 only: set[str] | None = None) -> dict:
    """Submit every step that is not done (with ``only``, every one of those steps), each depending (afterok) on the
    jobs of its not-done dependencies; returns {step id: job id} (also written to W/slurm/jobs.json, which keeps an
    earlier submission's job ids of the steps ``only`` leaves out: a later run must not submit them twice)."""
    import submitit
    todo, done = pending(steps, recipe, ctx, only=only)
    prints = fingerprints(steps, ctx)
    jobs_file = ctx.workdir / "slurm" / "jobs.json"
    env = ctx.env()
    queued = still_queued(todo, jobs_file, ctx)
    ids: dict[str, str] = dict(queued)
    for step in todo:
        if step.id in queued:
            print(f"{step.id}: still queued as job {queued[step.id]} (not submitted again)", flush=True)
            continue
        deps = [ids[d] for d in step.waits_for if d in ids]
        try:  # one executor per step: submitit's parameters accumulate, a training's GPU would stick to what follows
            executor = submitit.AutoExecutor(folder=str(ctx.workdir / "slurm" / "%j"), cluster="slurm")
        except RuntimeError as e:  # submitit looks for srun
            raise NnunetMtlError(f"--launcher slurm: {e} (submitit found no SLURM commands on this machine; "
                                 f"expected to run on a cluster's login node)") from None
        executor.update_parameters(**slurm_parameters(step, recipe, deps, options))
        job = executor.submit(run_step, executable(step.argv), {**env, **step.env}, str(ctx.log(step.id)), False,
                              _provenance(step, prints, ctx))
        ids[step.id] = str(job.job_id)
        print(f"submitted {step.id} as job {job.job_id}" + (f" (after {', '.join(deps)})" if deps else ""),
              flush=True)
    kept = {} if only is None else {sid: jid for sid, jid in _earlier_jobs(jobs_file).items() if sid not in only}
    jobs_file.parent.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps({"recipe": recipe.name, "jobs": {**kept, **ids}, "done_before": done}, indent=2))
    print(f"{len(ids) - len(queued)} jobs submitted, {len(queued)} still queued from before, {len(done)} steps done "
          f"before; job ids in {jobs_file}")
    return ids


# SLURM's states of a job that has not ended (sacct's State column; "CANCELLED by 123" and the like have ended)
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def _earlier_jobs(jobs_file: Path) -> dict[str, str]:
    """{step id: job id} of the last ``--launcher slurm`` of this work folder ({} when there was none)."""
    try:
        return json.loads(jobs_file.read_text(encoding="utf-8")).get("jobs", {})
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as e:
        raise NnunetMtlError(f"{jobs_file}: unreadable ({e}); expected the job ids of the last --launcher slurm "
                             f"(remove it once no job of it is queued)") from None


def still_queued(todo: list[Step], jobs_file: Path, ctx: Context) -> dict[str, str]:
    """{step id: job id} for the steps to run whose job from an earlier ``--launcher slurm`` of this work folder has
    not ended (pending or running, by sacct through submitit), and whose dependencies' jobs are kept too: a rerun
    submits only what is neither done nor on its way, with afterok on the jobs already queued. An unknown state
    (no sacct, no accounting) stops the rerun rather than submitting twice."""
    import submitit
    earlier = _earlier_jobs(jobs_file)
    wanted = {step.id: str(earlier[step.id]) for step in todo if step.id in earlier}
    if not wanted:
        return {}
    jobs = {sid: submitit.SlurmJob(folder=str(ctx.workdir / "slurm" / "%j"), job_id=jid)
            for sid, jid in wanted.items()}
    quiet = logging.getLogger("submitit")  # its warning of a failed sacct call becomes our one-line error below
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        next(iter(jobs.values())).get_info(mode="force")  # one sacct call for all of them (submitit's shared watcher)
    finally:
        quiet.setLevel(level)
    states = {sid: job.watcher.get_state(job.job_id, mode="cache").split()[0] for sid, job in jobs.items()}
    unknown = [f"{sid} (job {wanted[sid]})" for sid, st in states.items() if st == "UNKNOWN"]
    if unknown:
        raise NnunetMtlError(f"{jobs_file}: sacct gives no state for {', '.join(unknown[:3])}"
                             f"{' ...' if len(unknown) > 3 else ''}; expected to tell whether the earlier jobs are "
                             f"still queued: cancel them (scancel) and remove {jobs_file} to submit everything again")
    to_run = {step.id for step in todo}
    kept: dict[str, str] = {}
    for step in todo:  # plan order: a step's dependencies come before it; each must be done or kept
        if states.get(step.id) in LIVE_STATES and all(d in kept or d not in to_run for d in step.waits_for):
            kept[step.id] = wanted[step.id]
    return kept
