"""``nnunet_mtl recipe list | show NAME | run NAME --data KEY=PATH ... | report NAME | archive``: a paper's
protocol (or your own) from one TOML file, run end to end (docs/recipes.md)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

RUN_FILE = "recipe_run.json"


def register(subparsers):
    p = subparsers.add_parser(
        "recipe", help="run a paper's protocol (or your own) end to end from one TOML file",
        description="A recipe names the datasets and converters, the split, the trainer rows, the test sets, the "
                    "comparisons and the paper's reported numbers. 'run' does conversion, planning, every fold of "
                    "every trainer, the cross-validation (k folds: each fold's model on its validation cases), "
                    "prediction (per fold and the fold ensemble), evaluation, comparison and the "
                    "report, each step one command (--dry-run prints them); a rerun skips finished steps and "
                    "continues an interrupted training with nnU-Net's --c. See docs/recipes.md.")
    sub = p.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the shipped recipes").set_defaults(func=run_list)
    s = sub.add_parser("show", help="a recipe's file and its grid of steps")
    s.add_argument("name", metavar="NAME", help="a shipped recipe's name or a path to a .toml file")
    s.set_defaults(func=run_show)
    r = sub.add_parser("run", help="run (or resume) a recipe",
                       description="Runs every step of the recipe that is not done yet, in order, each through "
                                   "submitit (locally, or submitted to SLURM with afterok dependencies).")
    r.add_argument("name", metavar="NAME", help="a shipped recipe's name or a path to a .toml file")
    r.add_argument("--data", action="append", default=[], metavar="KEY=PATH",
                   help="a folder the recipe reads (recipe show lists its keys); remembered in the work folder")
    r.add_argument("--workdir", default=None, help="work folder (default ./recipe_NAME): nnU-Net's three folders, "
                                                   "predictions, comparisons, logs, report")
    r.add_argument("-device", choices=("auto", "cpu", "cuda"), default=None,
                   help="default: the recipe's defaults.device (auto: cuda when available here; with --launcher "
                        "slurm, cuda)")
    r.add_argument("-np", type=int, default=2, help="worker processes of each step (default 2)")
    r.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local (default): one step after the other on this machine; slurm: submit every step to "
                        "SLURM with afterok dependencies and return")
    r.add_argument("--gpus", default=None, metavar="0,1,...",
                   help="local launcher: run the trainings (then the predictions) one per listed GPU at a time")
    r.add_argument("--timeout-min", type=int, default=None, help="time limit of each step (default: the recipe's)")
    r.add_argument("--dry-run", action="store_true", help="print every command it would run, and which are done")
    r.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only the steps whose id (as --dry-run prints it) matches this shell pattern, and the steps "
                        "they wait for, e.g. 'train:cls_only:*' or '*:seed2' (quote it); repeatable")
    r.add_argument("--slurm-partition", default=None)
    r.add_argument("--slurm-account", default=None)
    r.add_argument("--slurm-qos", default=None)
    r.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per training / prediction job (default 8)")
    r.add_argument("--slurm-mem-gb", type=int, default=None)
    r.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before each job (e.g. 'module load cuda'); repeatable")
    r.set_defaults(func=run_run)
    rep = sub.add_parser("report", help="our numbers beside the paper's, from a run's files")
    rep.add_argument("name", metavar="NAME", help="a shipped recipe's name or a path to a .toml file")
    rep.add_argument("--workdir", default=None, help="the run's work folder (default ./recipe_NAME)")
    rep.add_argument("-o", default=None, help="output folder (default WORKDIR/report)")
    rep.set_defaults(func=run_report)
    a = sub.add_parser("archive", help="copy a run's results (no models, no images) into a folder",
                       description="Copies every evaluation, seed average, comparison, cross-validation, ablation, "
                                   "the predicted classes, the step timings and provenance and the report's Markdown "
                                   "and JSON (.json, .jsonl, .csv, .md under predictions/, crossval/, comparisons/, "
                                   "ablations/, logs/, report/) into -o, in the work folder's layout: small enough to "
                                   "commit or copy off a cluster. 'recipe report NAME --workdir OUT' remakes the "
                                   "report from it; copied into a work folder, 'recipe run' trains only what it does "
                                   "not cover.")
    a.add_argument("--workdir", required=True, help="the run's work folder")
    a.add_argument("-o", required=True, help="output folder (outside the work folder)")
    a.add_argument("--overwrite", action="store_true", help="replace files an earlier archive wrote there")
    a.set_defaults(func=run_archive)


def read_run_file(path: Path) -> dict:
    """What an earlier run of this work folder remembered (recipe, --data folders, device); {} when none."""
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        raise NnunetMtlError(f"{path} is not readable JSON; expected the file an earlier recipe run wrote (remove "
                             f"it and give --data again)") from None
    if not isinstance(stored, dict):
        raise NnunetMtlError(f"{path} is not a recipe run's file; expected a JSON object")
    return stored


def run_list(args) -> int:
    from nnunet_mtl.recipes.schema import load_recipe, shipped_recipes
    print(f"{'recipe':<22} {'estimate':<22} title")
    for name, path in sorted(shipped_recipes().items()):
        recipe = load_recipe(str(path), check_trainers=False)
        est = recipe.estimate
        cost = ", ".join(x for x in (f"{est['cpu_minutes']:g} CPU min" if "cpu_minutes" in est else "",
                                     f"{est['gpu_hours']:g} GPU h" if "gpu_hours" in est else "") if x)
        print(f"{name:<22} {cost or '-':<22} {recipe.title}")
    print("\nnnunet_mtl recipe show NAME: its file and steps; your own recipe: any .toml path (docs/recipes.md)")
    return 0




def run_show(args) -> int:
    from nnunet_mtl.recipes.plan import Context, plan_steps
    from nnunet_mtl.recipes.schema import load_recipe
    recipe = load_recipe(args.name)
    print(recipe.path.read_text(encoding="utf-8").rstrip())
    data = {k: Path(f"<{k}>") for k in recipe.data}
    steps = plan_steps(recipe, Context(workdir=Path("<workdir>"), data=data,
                                       device="cpu" if recipe.device == "cpu" else "cuda"))
    kinds: dict[str, int] = {}
    for s in steps:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    print(f"\n# {len(steps)} steps: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    if recipe.data:
        print("# run it with: nnunet_mtl recipe run " + recipe.name + " "
              + " ".join(f"--data {k}=PATH" for k in recipe.data))
        for k, help_ in recipe.data.items():
            print(f"#   {k}: {help_}")
    else:
        print(f"# run it with: nnunet_mtl recipe run {recipe.name}")
    return 0


def parse_data(items: list[str], recipe) -> dict[str, Path]:
    data = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise NnunetMtlError(f"--data {item!r}: expected KEY=PATH (keys of this recipe: "
                                 f"{', '.join(recipe.data) or 'none'})")
        if key not in recipe.data:
            raise NnunetMtlError(f"--data {key}=...: {recipe.name} reads no data {key!r}; expected one of "
                                 f"{', '.join(recipe.data) or '(none: it needs no --data)'}")
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise NnunetMtlError(f"--data {key}={path}: not a folder; expected the {key} folder ({recipe.data[key]})")
        data[key] = folder
    return data


def run_run(args) -> int:
    import torch

    from nnunet_mtl.recipes.launch import SlurmOptions, pending, run_local, submit_slurm
    from nnunet_mtl.recipes.plan import NOT_NEEDED, Context, local_order, plan_steps, select, selected
    from nnunet_mtl.recipes.schema import load_recipe
    recipe = load_recipe(args.name)
    workdir = Path(args.workdir or f"recipe_{recipe.name}").expanduser().resolve()
    from nnunet_mtl.outputs import check_output_folder
    check_output_folder(workdir, "--workdir")  # a file, or a folder that cannot be made: one line, dry run too
    run_file = workdir / RUN_FILE
    stored = read_run_file(run_file)
    if stored and stored.get("recipe") != recipe.name:
        raise NnunetMtlError(f"{workdir} holds a run of recipe {stored.get('recipe')!r}; expected another --workdir "
                             f"for {recipe.name!r}")
    data = {k: Path(v) for k, v in stored.get("data", {}).items() if k in recipe.data}
    data.update(parse_data(args.data, recipe))
    missing = [k for k in recipe.data if k not in data]
    if missing:
        raise NnunetMtlError(f"{recipe.name} needs " + " ".join(f"--data {k}=PATH" for k in missing)
                             + f" ({'; '.join(f'{k}: {recipe.data[k]}' for k in missing)})")
    for key, folder in data.items():
        if not folder.is_dir():
            raise NnunetMtlError(f"data {key}: {folder} (remembered in {run_file}) is not a folder any more; "
                                 f"expected --data {key}=PATH")
        if workdir == folder or folder in workdir.parents or workdir in folder.parents:
            raise NnunetMtlError(f"--workdir {workdir} and data {key} ({folder}) overlap; expected a work folder "
                                 f"outside the data (inputs are never written to)")
    device = args.device or stored.get("device") or recipe.device
    if device == "auto":  # on SLURM the jobs run on GPU nodes, not on the login node that decides here
        device = "cuda" if torch.cuda.is_available() or args.launcher == "slurm" else "cpu"
    if device == "cuda" and args.launcher == "local" and not args.dry_run and not torch.cuda.is_available():
        raise NnunetMtlError("-device cuda: no CUDA device here; expected -device cpu (or --launcher slurm)")
    if args.np < 1:
        raise NnunetMtlError(f"-np {args.np}; expected at least 1")
    gpus = None
    if args.gpus:
        try:
            gpus = [int(g) for g in args.gpus.split(",")]
        except ValueError:
            raise NnunetMtlError(f"--gpus {args.gpus}: expected GPU indices like 0,1,2") from None
        if args.launcher != "local" or device != "cuda":
            raise NnunetMtlError("--gpus: only with --launcher local and -device cuda")
    if args.timeout_min is not None:
        if args.timeout_min < 1:
            raise NnunetMtlError(f"--timeout-min {args.timeout_min}; expected at least 1")
        import dataclasses
        recipe = dataclasses.replace(recipe, timeout_min=args.timeout_min)
    ctx = Context(workdir=workdir, data=data, device=device, processes=args.np)
    steps = plan_steps(recipe, ctx)
    # --only: the selected steps and what they wait for; whether a step is done or needed is still judged on all
    only = {step.id for step in select(steps, args.only)} if args.only else None
    shown = selected(steps, only)
    makes_report = any(step.kind == "report" for step in shown)  # not with an --only that leaves it out
    if args.dry_run:
        # a script that runs as `run` does: the same variables, and it stops at the first step that fails; the
        # provenance of what is done is checked as run checks it (nothing recorded: a dry run writes nothing)
        _, done = pending(steps, recipe, ctx, adopt=False, only=only)
        print("set -e\nexport " + " ".join(f"{k}={shlex.quote(v)}" for k, v in ctx.env().items()))
        for i, step in enumerate(local_order(shown), 1):  # the local launcher's order (without --gpus)
            why = done.get(step.id)
            print(f"# [{i}/{len(shown)}] {step.id}" + ("" if why is None else f" ({why})" if why.startswith(NOT_NEEDED)
                                                       else f" (done: {why})"))
            print(("# " if why is not None else "") + step.command_line())
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"recipe": recipe.name, "recipe_file": str(recipe.path),
                                    "data": {k: str(v) for k, v in data.items()}, "device": device}, indent=2))
    print(f"recipe {recipe.name}: {len(shown)} steps{' (--only)' if only else ''} in {workdir} on {device} "
          f"({args.launcher} launcher)", flush=True)
    if args.launcher == "slurm":
        if str(workdir).startswith("/tmp/"):
            print(f"note: {workdir} must be on a file system the cluster's nodes see", flush=True)
        submit_slurm(steps, recipe, ctx, SlurmOptions(partition=args.slurm_partition, account=args.slurm_account,
                                                      qos=args.slurm_qos, cpus=args.slurm_cpus,
                                                      mem_gb=args.slurm_mem_gb, setup=tuple(args.slurm_setup)),
                     only)
        if makes_report:
            print(f"the report follows the last job: {workdir / 'report' / 'report.md'} "
                  f"(or now, for what is done: nnunet_mtl recipe report {recipe.name} --workdir {workdir})")
        return 0
    run_local(steps, recipe, ctx, gpus, only)
    report = workdir / "report" / "report.md"
    if report.is_file() and makes_report:  # not an old one after --only
        print(f"\n{report.read_text(encoding='utf-8')}")
    return 0


def run_report(args) -> int:
    from nnunet_mtl.recipes.plan import Context
    from nnunet_mtl.recipes.report import write_report
    from nnunet_mtl.recipes.schema import load_recipe
    recipe = load_recipe(args.name, check_trainers=False)
    workdir = Path(args.workdir or f"recipe_{recipe.name}").expanduser().resolve()
    if not workdir.is_dir():
        raise NnunetMtlError(f"--workdir {workdir} does not exist; expected the folder of a recipe run")
    stored = read_run_file(workdir / RUN_FILE)
    if stored and stored.get("recipe") != recipe.name:
        raise NnunetMtlError(f"{workdir} holds a run of recipe {stored.get('recipe')!r}, not {recipe.name!r}")
    # the report reads no data folder; one not remembered (an archive of the run: recipe archive) is a placeholder,
    # which the provenance check writes <data:KEY> as it writes any data folder
    known = stored.get("data") or {}
    data = {k: Path(known.get(k) or f"<data:{k}>") for k in recipe.data}
    ctx = Context(workdir=workdir, data=data, device=stored.get("device", "cpu"))
    # the numbers must be the recipe's: a step done by another protocol (the recipe edited since) is refused
    from nnunet_mtl.recipes.plan import check_provenance, plan_steps, step_state
    steps = plan_steps(recipe, ctx)
    check_provenance(steps, {s.id: "" for s in steps if s.kind != "report" and step_state(s, recipe, ctx)[0]}, ctx,
                     adopt=False)
    markdown, written = write_report(recipe, ctx, Path(args.o).resolve() if args.o else None)
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_archive(args) -> int:
    from nnunet_mtl.recipes.archive import archive_results
    copies = archive_results(Path(args.workdir).expanduser(), Path(args.o).expanduser(), overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in copies)
    print(f"kept {len(copies)} files ({size / 1024:.0f} KiB) in {Path(args.o).expanduser().resolve()}; "
          f"'nnunet_mtl recipe report NAME --workdir {args.o}' remakes the report from them")
    return 0
