"""The `dltool` command line: parse arguments, call one library function, render, map errors.

Nothing here imports torch at module level: `dltool --help` must stay instant.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, List, NoReturn, Optional

import typer
from typer.core import TyperGroup

from dltool.errors import DltoolError
from dltool.training.callbacks import Callback


class _Commands(TyperGroup):
    """The command group: `--tta` given without a mode (last, or before another option) means flip."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None and any("--tta" in getattr(p, "opts", ()) for p in command.params):
            parse = command.parse_args
            command.parse_args = lambda ctx, args: parse(ctx, tta_with_default(args))
        return command


def tta_with_default(args: List[str]) -> List[str]:
    """`--tta` with no mode after it is `--tta flip` (a value beginning with '-' is the next option)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--tta" and (i + 1 == len(out) or (out[i + 1].startswith("-") and out[i + 1] != "-")):
            out.insert(i + 1, "flip")
    return out


app = typer.Typer(
    cls=_Commands,
    name="dltool",
    help="Train image classifiers from one YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def stderr_console():
    from dltool.cli.text import console

    return console(stderr=True)


@contextlib.contextmanager
def user_errors(main_process: bool = True) -> Iterator[None]:
    """Turn a DltoolError into one red line on stderr and its exit code; bugs keep their traceback.
    An interruption is no error: its line ("interrupted by SIGINT ...") has no "error:" prefix.
    Outside the main process, an error every process raised together (a stop request, a non-finite
    loss) exits quietly with 0: the launcher stops every worker as soon as one exits with an error,
    which would cut rank 0 short while it saves and says what happened; rank 0's code is the run's."""
    try:
        yield
    except DltoolError as exc:
        from dltool.cli.text import plain, safe
        from dltool.errors import Interrupted

        if main_process or not exc.everywhere:
            details = getattr(exc, "details", "")
            if details:  # the traceback of the user's own code, their frames only
                sys.stderr.write("\n".join(plain(line) for line in details.split("\n")) + "\n")
            prefix = "" if isinstance(exc, Interrupted) else "[red]error:[/red] "
            stderr_console().print(f"{prefix}{safe(exc)}", soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        raise typer.Exit(code=0) from None


CodeOption = typer.Option(
    None, "--code", metavar="FILE.py",
    help="A Python file of your own layers, datasets, transforms, losses or models, registered with "
         "`from dltool import register` (repeatable; see docs/your-code.md)")


def load_user_code(code: Optional[List[Path]]) -> None:
    """Load the --code files and installed plugins; a changed code file is one warning line.

    Raises:
        DltoolError: a file is missing, raised while loading, or registers a name that is taken.
    """
    import warnings

    from dltool.config.usercode import load_code

    warnings.showwarning = _show_warning
    load_code([str(path) for path in code or []])


_python_showwarning = __import__("warnings").showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A CodeChanged or TtaWarning as one yellow line; any other (a library's) as Python shows it, with its
    control characters as escapes: matplotlib's "Glyph 27 (\x1b) missing" quotes a class name's."""
    from dltool.errors import CodeChanged, TtaWarning

    if not issubclass(category, (CodeChanged, TtaWarning)):
        if file is not None:
            _python_showwarning(message, category, filename, lineno, file, line)
            return
        import warnings

        from dltool.cli.text import plain

        shown = warnings.formatwarning(message, category, filename, lineno, line)
        with contextlib.suppress(OSError):
            sys.stderr.write("\n".join(plain(part) for part in shown.split("\n")))
        return
    from dltool.cli.text import safe

    stderr_console().print(f"[yellow]warning:[/yellow] {safe(message)}", soft_wrap=True)


TtaOption = typer.Option(
    None, "--tta", metavar="MODE",
    help="Test-time augmentation: average the probabilities over the original and its horizontal flip (flip; "
         "also --tta alone), five crops (crops) or both (flip,crops)")
CamMethodOption = typer.Option("GradCAM", "--cam-method", metavar="NAME", help="GradCAM, GradCAMPlusPlus, EigenCAM, ... (grad-cam's names)")
CamLayerOption = typer.Option(None, "--cam-layer", metavar="NAME",
                              help="Layer to draw the heat map at, by dotted name (default: the last with a spatial output)")


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


OverridesArg = typer.Argument(
    None, metavar="[KEY=VALUE]...",
    help="Dotted overrides, e.g. train.epochs=3; list indexes may be negative (model.layers.-1.Dropout=0.3), "
         "and + appends (model.layers.+=Dropout)")


CONFIG_HELP = (
    "Print the resolved config (after base: and overrides), or the first error that `train` would give "
    "before its first step.\n\n"
    "Checks the keys and values, then builds what a run builds, through the same builders: the names and "
    "arguments of the dataset, the train and eval transforms, batch_transforms, every layer (nested ones too), "
    "the loss, the optimizer and the scheduler, and the device. Layer shapes are checked when the input shape "
    "is known without reading data: model.input_shape is set, or the dataset ships with dltool (Digits, "
    "LinearData); for those, one real batch also goes through forward, loss, backward and an optimizer step, "
    "as train does before it creates its run folder."
)


@app.command("config", help=CONFIG_HELP)
def config_command(
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[List[str]] = OverridesArg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Print the resolved config, or the first error `train` would give before its first step."""
    from dltool.config.load import dump_yaml, load_config

    with user_errors():
        load_user_code(code)
        from dltool.models import with_model_defaults
        from dltool.training.check import check_config

        loaded, note = with_model_defaults(load_config(config, overrides or []))
        if note:
            stderr_console().print(note, markup=False, soft_wrap=True)
        check_config(loaded)
        data = loaded.to_data()
    from dltool.data.draft import decode_size, reads_files

    if reads_files(loaded.data):
        stderr_console().print(decode_size(loaded.data).describe(), markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(dump_yaml(data))


@app.command("tune")
def tune_command(
    config: Path = typer.Argument(..., help="YAML config with a tune: section"),
    overrides: Optional[List[str]] = OverridesArg,
    trials: int = typer.Option(..., "--trials", help="Run until the study holds N finished (complete or pruned) trials"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna database URL shared by all workers (default: sqlite in runs/NAME/study.db)"),
    name: Optional[str] = typer.Option(None, "--name", help="Study name and folder (default: the config's file name)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the study folder goes"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes on this machine working on the study"),
    heartbeat: int = typer.Option(10, "--heartbeat", min=1, help="Seconds between a trial's heartbeats; a trial silent for twice that (its process killed) is retried"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Hyperparameter search with Optuna over the config's tune: section; each trial is a run in runs/NAME/trials/."""
    from dltool.cli.render_experiments import trials_table
    from dltool.cli.text import plain
    from dltool.experiments.tune import tune

    console = stderr_console()
    progress = _TrialsProgress(console, trials, quiet)
    with user_errors():  # after the bar stops, so the error line is the last one
        try:
            load_user_code(code)
            result = tune(config, trials, storage=storage, name=name, runs_dir=runs_dir, overrides=overrides or [],
                          workers=workers, heartbeat=heartbeat, on_start=progress.start, on_trial=progress.trial)
        except KeyboardInterrupt:
            progress.stop()
            console.print("interrupted: stopped at once; run the same dltool tune command again to go on with the "
                          "study", soft_wrap=True, markup=False)
            raise typer.Exit(code=130) from None
        finally:
            progress.stop()
    if as_json:
        print_json(result.to_json())
    if not quiet:
        console.print(trials_table(result.trials, result.metric, result.best_trial))
        if result.best_trial is None:
            console.print("no trial completed yet: no best.yaml", markup=False, soft_wrap=True)
        else:
            console.print(plain(f"best: trial {result.best_trial}, {result.metric} {result.best_value:.4g}; "
                                f"wrote {result.folder / 'best.yaml'} and {result.folder / 'trials.csv'}"),
                          markup=False, soft_wrap=True)


class _TrialsProgress:
    """A bar across trials on stderr, from when the study is open (a config error shows alone), and
    a line per trial this process ran."""

    def __init__(self, console, trials: int, quiet: bool):
        self.console, self.trials, self.quiet = console, trials, quiet
        self.bar = None

    def start(self, finished: int) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console)
        self.bar.add_task("trials", total=self.trials, completed=min(finished, self.trials))
        self.bar.start()

    def trial(self, row: dict, finished: int, metric: str) -> None:
        from dltool.cli.render_experiments import trial_line
        from dltool.cli.text import plain

        if self.bar is not None:
            self.bar.console.print(plain(trial_line(row, metric, finished, self.trials)), markup=False, soft_wrap=True)
            self.bar.update(self.bar.task_ids[0], completed=min(finished, self.trials))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("lr-find")
def lr_find_command(
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[List[str]] = OverridesArg,
    start: float = typer.Option(1e-7, "--start", help="First learning rate of the ramp"),
    end: float = typer.Option(10.0, "--end", help="Last learning rate of the ramp"),
    steps: int = typer.Option(400, "--steps", help="Optimizer steps, one per learning rate"),
    out: Optional[Path] = typer.Option(None, "--out", help="The PNG (default: <config name>-lr-find.png)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Learning-rate range test: loss against lr as a PNG, and a suggested optimizer.lr; writes no run folder."""
    from dltool.experiments.lrfind import lr_find

    with user_errors():
        load_user_code(code)
        result = lr_find(config, overrides or [], start=start, end=end, steps=steps, out=out)
    if as_json:
        print_json(result.to_json())
        return
    console = stderr_console()
    if result.suggested_lr is None:
        console.print(f"no suggestion: {result.how}; wrote {result.plot}", markup=False, soft_wrap=True)
    else:
        console.print(f"suggested lr {result.suggested_lr:.3g} ({result.how}); try: dltool train {config} "
                      f"optimizer.lr={result.suggested_lr:.3g}; wrote {result.plot}", markup=False, soft_wrap=True)


@app.command("plot")
def plot_command(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run folders (also ones still training)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="One metrics.csv column (val_accuracy, train_loss, lr, ...) instead of loss and accuracy"),
    out: Path = typer.Option(Path("plot.png"), "--out", help="The picture to write: .png, .jpg, .svg or .pdf"),
) -> None:
    """Training curves of one or more runs in one picture (a folds or tune folder: its folds or trials)."""
    from dltool.cli.text import plain
    from dltool.experiments.plots import plot_runs

    with user_errors():
        plotted = plot_runs(runs, out, metric)
    console = stderr_console()
    for note in plotted.notes:
        console.print(f"warning: {plain(note)}", markup=False, soft_wrap=True)
    console.print(f"wrote {plain(plotted.path)}", markup=False, soft_wrap=True)


@app.command("runs")
def runs_command(
    folder: Path = typer.Argument(Path("runs"), metavar="[DIR]", help="Folder holding run folders"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
) -> None:
    """The run folders under DIR: status (finished, running, interrupted, failed, pruned, no checkpoints,
    unreadable), epochs, best metric, time."""
    from dltool.experiments.runs_table import list_runs

    with user_errors():
        rows = list_runs(folder)
    if as_json:
        print_json(rows)
        return
    from dltool.cli.render_experiments import runs_table
    from dltool.cli.text import plain, safe

    console = stderr_console()
    if not rows:
        console.print(f"no runs in {plain(folder)}", markup=False, soft_wrap=True)
        return
    console.print(runs_table(rows, f"runs in {safe(folder)}"))
    for row in rows:
        if row.get("reason"):
            console.print(f"{plain(row['name'])}: {plain(row['status'])}: {plain(row['reason'])}", markup=False,
                          soft_wrap=True)


@app.command("list")
def list_command(
    kind: Optional[str] = typer.Argument(None, help="layers, datasets, transforms, losses, optimizers, schedulers, models"),
    name: Optional[str] = typer.Argument(None, help="Show the arguments of one entry"),
    pattern: Optional[str] = typer.Option(None, "--filter", help="Only names matching this (wildcards, or a word anywhere in the name)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """List what the registries hold (or the arguments of one entry); models include timm's when installed."""
    from dltool.cli.listing import describe, registry_names, timm_installed

    with user_errors():
        load_user_code(code)
        if name is not None:
            rows = describe(kind, name)
            if as_json:
                print_json([{"argument": a, "default": d} for a, d in rows])
            else:
                stderr_console().print(_arguments_table(kind, name, rows))
            return
        names = registry_names(kind, pattern)
    if as_json:
        print_json(names)
        return
    from dltool.cli.text import safe

    console = stderr_console()
    for registry_kind, entries in (names.items() if isinstance(names, dict) else [(kind, names)]):
        console.print(f"[bold]{safe(registry_kind)}[/bold] ({len(entries)})")
        console.print("  " + ", ".join(safe(entry) for entry in entries), soft_wrap=False)
        if registry_kind.lower() == "models" and not timm_installed():
            console.print('  timm\'s models (TimmModel) need timm: pip install "dltool[timm]"', markup=False)


def _arguments_table(kind: str, name: str, rows):
    from rich.table import Table

    from dltool.cli.text import safe

    table = Table(title=f"{safe(kind)}: {safe(name)}")
    table.add_column("argument")
    table.add_column("default")
    for argument, default in rows:
        table.add_row(safe(argument), safe(default))
    return table


@app.command("shapes")
def shapes_command(
    config: Path = typer.Argument(..., help="YAML config file, or a run directory or checkpoint"),
    overrides: Optional[List[str]] = OverridesArg,
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Batch dimension of the shapes"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W (instead of model.input_shape or the data's)"),
    depth: int = typer.Option(3, "--depth", min=1, help="Levels of nested layers to list"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Classes, instead of reading the dataset"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Layer-by-layer output shapes, parameters and mult-adds (table on stderr)."""
    from dltool.cli.render_shapes import render_table
    from dltool.errors import ShapeError
    from dltool.training.inspect_model import shapes_for_config

    console = stderr_console()
    with user_errors():
        load_user_code(code)
        try:
            report = shapes_for_config(str(config), overrides or [], batch_size=batch_size,
                                       input_shape=input_shape, depth=depth, num_classes=num_classes)
        except ShapeError as exc:
            if exc.rows:
                console.print(render_table(None, exc.rows, title="layers before the error"))
            raise
    if as_json:
        print_json(report.to_json())
    else:
        console.print(render_table(report), crop=False)


@app.command("data")
def data_command(
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[List[str]] = OverridesArg,
    show: int = typer.Option(0, "--show", min=0, help="Write a PNG grid of N augmented train samples"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where --show writes (default: <config>-samples.png)"),
    stats: bool = typer.Option(False, "--stats", help="Per-channel mean/std of the train split, for Normalize"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Classes and counts per split, skipped files, sample shape; --stats, --show N."""
    from functools import partial

    from dltool.cli.render_data import render_data
    from dltool.config.load import load_config
    from dltool.data.report import inspect_data
    from dltool.store.writing import write_output

    with user_errors():
        load_user_code(code)
        report = inspect_data(load_config(config, overrides or []), stats=stats, show=show, out=out,
                              write=partial(write_output, inputs=[config]))
    if as_json:
        print_json(report)
    else:
        stderr_console().print(render_data(report))


@app.command("train")
def train_command(
    config: Optional[str] = typer.Argument(None, metavar="CONFIG", help="YAML config file (not needed with --resume)"),
    overrides: Optional[List[str]] = OverridesArg,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder or checkpoint (train.* overrides allowed, e.g. train.epochs=30)"),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: the config's file name)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run folders go"),
    folds: Optional[int] = typer.Option(None, "--folds", min=2, help="K-fold cross-validation: one sub-run per fold"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Train in N local processes (one per GPU) through torchrun"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Train a model from a YAML config; writes a run folder (config, metrics, checkpoints, TensorBoard)."""
    from dltool.cli.progress import make_progress, summary_table
    from dltool.cli.text import plain
    from dltool.training.folds import train_folds
    from dltool.training.train import check_config_or_resume, train

    overrides = list(overrides or [])
    if resume is not None and config is not None and "=" in config:
        overrides.insert(0, config)  # `--resume runs/x train.epochs=30`: the first override lands in CONFIG
        config = None
    with user_errors():
        load_user_code(code)
        check_config_or_resume(config, resume)
    if nproc is not None:
        _launch_train(nproc, config, overrides, resume, name, runs_dir, folds, quiet)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 shows the run
    console = stderr_console()
    progress = make_progress(console, quiet or not main_process)
    started = _Started()
    try:
        with user_errors(main_process):
            if folds is not None and resume is None:
                result = train_folds(config, folds, runs_dir=runs_dir, name=name, overrides=overrides,
                                     callbacks=[progress, started])
            else:
                result = train(config, runs_dir=runs_dir, name=name, resume=resume, overrides=overrides,
                               callbacks=[progress, started])
    except KeyboardInterrupt:
        console.print(f"interrupted: {plain(started.kept(resume))}", soft_wrap=True, markup=False)
        raise typer.Exit(code=130) from None
    finally:
        if hasattr(progress, "close"):
            progress.close()
    if not quiet and main_process:
        console.print(summary_table(result.summary, result.run_dir))


class _Started(Callback):
    """Whether training started (its first checkpoint is saved by then): what a hard stop keeps."""

    run_dir: Optional[str] = None

    def on_fit_start(self, info: dict) -> None:
        self.run_dir = info["run_dir"]

    def kept(self, resume: Optional[Path]) -> str:
        if self.run_dir is not None:
            return f"stopped at once; the last saved checkpoint is kept; continue with: dltool train --resume {self.run_dir}"
        if resume is not None:
            return f"stopped at once during start-up; {resume} keeps its last checkpoint"
        return "stopped at once during start-up, before the first checkpoint; nothing to resume"


def _launch_train(nproc, config, overrides, resume, name, runs_dir, folds, quiet) -> None:
    """`train --nproc N`: the same command in N processes started by torchrun; exits with their outcome."""
    from dltool.errors import ConfigError
    from dltool.training.launch import launch_train

    with user_errors():
        if folds is not None:
            raise ConfigError("--folds trains its folds one after another in one process; not with --nproc")
        code = launch_train(nproc, config, overrides, resume=str(resume) if resume else None, name=name,
                            runs_dir=str(runs_dir), quiet=quiet)
    raise typer.Exit(code=code)


@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., metavar="RUN_OR_CKPT", help="Run folder (best.pt, else last.pt) or checkpoint"),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="data.* overrides, e.g. data.dataset.root=other"),
    split: str = typer.Option("val", "--split", help="val, test or train"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Evaluation batch size (default: the run's)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder, replaced as a whole (default: the run folder's "
                                       "eval/, or eval-test/, eval-train/ for those splits)"),
    tta: Optional[str] = TtaOption,
    cam: int = typer.Option(0, "--cam", metavar="N", min=0,
                            help="Heat maps of the N most confident mistakes into the report's cam/ (needs the cam extra)"),
    cam_method: str = CamMethodOption,
    cam_layer: Optional[str] = CamLayerOption,
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Evaluate a checkpoint: loss, accuracy, per-class metrics, confusion matrix, mistakes."""
    from dltool.cli.render_eval import render_eval
    from dltool.cli.text import plain
    from dltool.inference.eval_report import prepare_report_dir, write_outputs
    from dltool.inference.evaluate import default_out_dir, evaluate_checkpoint

    with user_errors():
        load_user_code(code)
        if cam:
            from dltool.inference.cam import import_gradcam, method_name

            import_gradcam("--cam")
            method_name(cam_method)
        report_dir = out or default_out_dir(target, split)
        prepare_report_dir(report_dir)  # before the work: a place that cannot take the report is said at once
        result = evaluate_checkpoint(target, overrides or [], split=split, batch_size=batch_size, device=device,
                                     tta=tta)
    # the results are shown first: a report folder that refuses the files does not hide them
    console = stderr_console()
    if as_json:
        print_json(result.to_json())
    else:
        for part in render_eval(result):
            console.print(part)
    with user_errors():
        written = write_outputs(result, report_dir)
    if not as_json:
        console.print(f"wrote {', '.join(plain(p) for p in written)}", markup=False, soft_wrap=True)
    if cam:
        from dltool.inference.cam import eval_cams

        with user_errors():
            maps, how = eval_cams(result, cam, report_dir, method=cam_method,
                                  layer=cam_layer)
        where = f" into {plain(maps[0].parent)}" if maps else ""
        console.print(f"wrote {len(maps)} heat maps of misclassified samples{where} ({how})", markup=False,
                      soft_wrap=True)


@app.command("predict")
def predict_command(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Image files, folders (recursive) or globs"),
    model: Path = typer.Option(..., "--model", "-m", help="Run folder, checkpoint, or a file from `dltool export` (.onnx runs without torch)"),
    topk: int = typer.Option(5, "--topk", min=1, help="Classes listed per image"),
    output_format: str = typer.Option(
        "table", "--format",
        help="table, json or csv. In csv, a file name, class name or error that begins with =, +, -, @, tab or "
             "carriage return gets a single quote in front, so a spreadsheet shows it instead of running it as a "
             "formula; json keeps every string exactly"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    tta: Optional[str] = TtaOption,
    cam: Optional[Path] = typer.Option(None, "--cam", metavar="DIR",
                                       help="Write a Grad-CAM heat map of each image into DIR (needs the cam extra)"),
    cam_class: Optional[str] = typer.Option(None, "--cam-class", metavar="NAME",
                                            help="Class the heat map explains (default: the predicted one)"),
    cam_method: str = CamMethodOption,
    cam_layer: Optional[str] = CamLayerOption,
    trust_program: bool = typer.Option(
        False, "--trust-program",
        help="Run a TorchScript --model file: it is a program, and loading it runs its code; only for files you "
             "trust (ONNX files run no code)"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Classify image files with a checkpoint (exit 2 when any input could not be read)."""
    from dltool.cli.render_predict import render_predict
    from dltool.errors import ConfigError
    from dltool.inference.predict import predict, to_csv_rows

    with user_errors():
        if output_format not in ("table", "json", "csv"):
            raise ConfigError(f"--format: unknown format {output_format!r}; allowed: table, json, csv")
        load_user_code(code)
        heat = None
        if cam is not None:
            from dltool.inference.cam import PredictCams

            heat = PredictCams(model, device=device, method=cam_method, layer=cam_layer, cam_class=cam_class)
        elif cam_class is not None or cam_layer is not None:
            raise ConfigError("--cam-class and --cam-layer choose what --cam DIR draws; add --cam DIR")
        with _PredictProgress(stderr_console()) as progress:
            predictions = predict(inputs, model, topk=topk, batch_size=batch_size, device=device, tta=tta,
                                  trust_program=trust_program, on_progress=progress.update)
    if output_format == "json":
        print_json([p.to_json() for p in predictions])
    elif output_format == "csv":
        import csv

        if hasattr(sys.stdout, "reconfigure"):  # a file name that is no UTF-8 comes out as its own bytes
            sys.stdout.reconfigure(errors="surrogateescape")
        csv.writer(sys.stdout, lineterminator="\n").writerows(to_csv_rows(predictions))
    else:
        from dltool.cli.text import console

        console(stderr=False).print(render_predict(predictions))
    if heat is not None:
        with user_errors():
            maps = heat.write(predictions, cam)
        from dltool.cli.text import plain

        stderr_console().print(f"wrote {len(maps)} heat maps into {plain(cam)} ({heat.heat.describe()})", markup=False,
                               soft_wrap=True)
    failed = [p for p in predictions if p.error is not None]
    if failed:
        from dltool.cli.text import safe

        first = f"{failed[0].path}: {failed[0].error}"
        text = first if len(failed) == 1 else f"{len(failed)} of {len(predictions)} inputs could not be classified (first: {first})"
        stderr_console().print(f"[red]error:[/red] {safe(text)}", soft_wrap=True)
        raise typer.Exit(code=2)


class _PredictProgress:
    """A bar of files classified on a terminal's stderr, once there is more than one batch."""

    def __init__(self, console):
        self.console, self.bar, self.task = console, None, None

    def __enter__(self) -> _PredictProgress:
        return self

    def update(self, done: int, total: int) -> None:
        if not self.console.is_terminal or done >= total and self.bar is None:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.task = self.bar.add_task("images", total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command("export")
def export_command(
    target: Path = typer.Argument(..., metavar="RUN_OR_CKPT", help="Run folder (best.pt, else last.pt) or checkpoint"),
    output_format: str = typer.Option("onnx", "--format", help="onnx or torchscript"),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: RUN/model.onnx, RUN/model.torchscript.pt; "
                                       "an .onnx name holds ONNX only)"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset, within what this torch exports "
                                        "(default: the exporter's); --json reports the opset written"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
    code: Optional[List[Path]] = CodeOption,
) -> None:
    """Write a deployable ONNX or TorchScript file, checked against the checkpoint before it is kept."""
    from dltool.inference.export import export

    with user_errors():
        load_user_code(code)
        result = export(target, output_format, out, opset)
    if as_json:
        print_json(result.to_json())
        return
    stderr_console().print(f"wrote {result.path} ({result.format} via the {result.exporter} exporter; outputs within "
                           f"{result.max_difference:.2g} of the checkpoint's on {result.samples} {result.source} inputs)",
                           soft_wrap=True, markup=False)


# --help lists the commands in the order a user meets them, not the order they are defined in.
_HELP_ORDER = ["train", "eval", "predict", "export", "tune", "lr-find", "runs", "plot", "shapes", "data", "list",
               "config"]
app.registered_commands.sort(key=lambda command: _HELP_ORDER.index(command.name))


def main() -> None:
    """The `dltool` command: run it, then end the process at once (see `exit_now`)."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        app()
    except SystemExit as done:
        exit_now(done.code)


def exit_now(code: int | str | None) -> NoReturn:
    """End the process with `code` without unloading every imported module.

    After a command, the interpreter takes 0.3-0.8 s to tear down torch, torchvision, tensorboard
    and the rest, longer than many commands run. By now every file dltool wrote is closed and
    synced; the exit handlers libraries registered (logging, multiprocessing, ...) still run, and
    the output streams are flushed. A thread that is still working keeps the ordinary exit.
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if busy:
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
