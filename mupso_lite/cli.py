"""The command line: ``python -m mupso_lite`` or ``mupso-lite``.

    mupso-lite coord-check --optimizer kfac --param mup --widths 64,256,1024 --out results/coord
    mupso-lite sweep --widths 64,256 --lrs 0.01,0.1 --optimizers kfac --results results/sweep.jsonl
    mupso-lite report results/sweep.jsonl --out results/report

A bad flag or value prints one usage line and an error, and exits with code 2; Ctrl-C stops
cleanly, says what was saved and exits with code 130.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .scaling import OPTIMIZERS, PARAMS

PLOTLYJS = ("inline", "cdn", "directory")  # plots.save_html's choices; plotly loads on use only


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: "mupso-lite sweep: error: ... (see --help)", exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that ends each option with its default, lists written as typed: "(default: 64,128)"."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "(default" in text or not action.option_strings or default is None or default is False \
                or default is argparse.SUPPRESS:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


PLOTLYJS_HELP = ("how each HTML file gets plotly.js: 'inline' puts it inside every file (~4.8 MB each, "
                 "opens offline); 'directory' writes one shared plotly.min.js next to the HTML files, "
                 "which load it from there (small files, offline while they stay together); 'cdn' makes "
                 "small files that load plotly.js from the internet when opened (needs a connection)")

def _list_of(kind, name, choices=None, positive=False):
    """An argparse type: "a,b,c" -> [kind(a), kind(b), kind(c)], checked."""
    def parse(text):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {name}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of {name}, got {text!r}")
        for v in values:
            if choices and v not in choices:
                raise argparse.ArgumentTypeError(f"expected values among {', '.join(choices)}, got {v!r}")
            if positive and not v > 0:
                raise argparse.ArgumentTypeError(f"expected {name} > 0, got {v!r}")
        return values
    return parse


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_float(text):
    """An argparse type: a finite float >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _model_flags(p):
    p.add_argument("--depth", type=_positive_int, default=3, help="number of weight layers")
    p.add_argument("--activation", default="tanh", choices=["tanh", "relu", "gelu"], help="activation function")
    p.add_argument("--base-width", type=_positive_int, default=64, help="base width M0 (where SP and muP agree)")
    p.add_argument("--damping-mode", choices=["table", "fixed", "pi", "trace"],
                   help="K-FAC/FOOF damping mode (default: table)")
    p.add_argument("--inverse-interval", type=_positive_int,
                   help="K-FAC steps between inverses (default: the optimizer's)")


def _sweep_default(key):
    from .sweep import MODEL_KEYS, OPTIM_KEYS, RUN_KEYS
    value = {**MODEL_KEYS, **OPTIM_KEYS, **RUN_KEYS}[key]
    return f"(default: {value}, or what --grid sets)"


def parser() -> argparse.ArgumentParser:
    """The argument parser with the subcommands coord-check, sweep and report."""
    top = Parser(prog="mupso-lite", formatter_class=HelpFormatter,
                 description="muP for SGD, Adam, K-FAC, Shampoo, FOOF, Muon and SOAP: coordinate checks, "
                             "sweeps and reports.")
    sub = top.add_subparsers(dest="command", required=True, metavar="{coord-check,sweep,report}")

    c = sub.add_parser("coord-check", help="feature change vs width; writes CSV and HTML", formatter_class=HelpFormatter,
                       description="Train fresh MLPs at each width for a few steps and fit the width "
                                   "exponent of every layer's feature change (0 = width-stable).")
    c.add_argument("--optimizer", choices=OPTIMIZERS, default="kfac", help="optimizer")
    c.add_argument("--param", choices=PARAMS, default="mup", help="parametrization")
    c.add_argument("--widths", type=_list_of(int, "widths", positive=True), default=[64, 128, 256, 512, 1024],
                   help="widths M, comma-separated")
    c.add_argument("--steps", type=_list_of(int, "steps", positive=True), default=[1, 3],
                   help="steps at which to record")
    c.add_argument("--seeds", type=_list_of(int, "seeds"), default=[0, 1], help="seeds, comma-separated")
    c.add_argument("--data", default="teacher", choices=["teacher", "digits", "mnist1d", "teacher_regression"],
                   help="dataset")
    c.add_argument("--lr", type=_list_of(float, "lr", positive=True), default=[0.1], help="base lr (one value)")
    c.add_argument("--damping", type=_nonneg_float, help="base damping (default: the optimizer's)")
    _model_flags(c)
    c.add_argument("--out", default="results/coord", help="output folder")
    c.add_argument("--plotlyjs", choices=PLOTLYJS, default="inline", help=PLOTLYJS_HELP)
    c.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sweep", help="run a grid into a JSONL results file (resumable)", formatter_class=HelpFormatter,
                       description="Every combination of the lists is one run; finished runs in the "
                                   "results file are skipped, so an interrupted sweep resumes.")
    s.add_argument("--grid", help="a JSON file holding the grid (a dict of lists); the list flags add to it")
    s.add_argument("--widths", type=_list_of(int, "widths", positive=True),
                   help=f"widths M, comma-separated {_sweep_default('width')}")
    s.add_argument("--lrs", type=_list_of(float, "lrs", positive=True), help=f"base lrs {_sweep_default('lr')}")
    s.add_argument("--dampings", type=_list_of(float, "dampings"),
                   help="base dampings (default: the optimizer's, or what --grid sets)")
    s.add_argument("--params", type=_list_of(str, "params", PARAMS),
                   help=f"parametrizations among {', '.join(PARAMS)} {_sweep_default('param')}")
    s.add_argument("--optimizers", type=_list_of(str, "optimizers", OPTIMIZERS),
                   help=f"optimizers among {', '.join(OPTIMIZERS)} {_sweep_default('optimizer')}")
    s.add_argument("--datasets", type=_list_of(str, "datasets", ("digits", "teacher", "mnist1d")),
                   help=f"datasets among digits, teacher, mnist1d {_sweep_default('dataset')}")
    s.add_argument("--seeds", type=_list_of(int, "seeds"), help=f"seeds {_sweep_default('seed')}")
    s.add_argument("--steps", type=_positive_int, default=100, help="training steps per run")
    s.add_argument("--batch-size", type=_positive_int, default=64, help="batch size")
    _model_flags(s)
    s.add_argument("--results", default="results/sweep.jsonl", help="the JSONL results file (appended to)")
    s.add_argument("--executor", choices=["local", "serial", "ray"], default="local",
                   help="local: a process pool; serial: this process; ray: a Ray cluster")
    s.add_argument("--workers", type=_positive_int, help="parallel runs (default: CPU count)")
    s.add_argument("--ray-address", help="attach to this Ray cluster (e.g. ray://head:10001 or auto; "
                                         "default: start a local one)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="HTML figures and a CSV summary of a results file", formatter_class=HelpFormatter,
                       description="Writes lr_transfer.html, damping_transfer.html, accuracy_vs_width.html "
                                   "(whichever the results can show) and summary.csv.")
    r.add_argument("results", help="a JSONL file written by sweep")
    r.add_argument("--out", default="results/report", help="output folder")
    r.add_argument("--plotlyjs", choices=PLOTLYJS, default="inline", help=PLOTLYJS_HELP)
    return top


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    p = parser()
    args = p.parse_args(argv)
    sub = p._subparsers._group_actions[0].choices[args.command]
    try:
        return {"coord-check": _coord, "sweep": _sweep, "report": _report}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        sub.error(str(e))  # one line, exit code 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback, the shell's code for SIGINT
        print(f"{sub.prog}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130


def _check_out_dir(flag: str, value: str, files=()) -> Path:
    """``value`` as a folder that exists or can be created and written, else ValueError naming ``flag``;
    each of ``files`` in it must be absent or a writable regular file (a folder, a FIFO or a
    socket of that name would fail, or block, only after all the work)."""
    path = Path(value)
    for name in files:
        f = path / name
        if (f.exists() or f.is_symlink()) and not (f.is_file() and os.access(f, os.W_OK)):
            kind = ("a broken link" if not f.exists() else "a folder" if f.is_dir() else
                    "a read-only file" if f.is_file() else "not a regular file")
            raise ValueError(f"{flag}: expected a folder where {name} can be written, got {value!r} "
                             f"({f} is {kind}; remove it or choose another --out)")
    where = path
    while not where.exists() and not where.is_symlink() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        because = "it exists and is not a folder" if where == path else f"{where} is not a folder"
        raise ValueError(f"{flag}: expected a folder that can be created, got {value!r} ({because})")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: expected a writable folder, got {value!r} ({where}: permission denied)")
    return path


def _js(args) -> tuple:
    """plotly.min.js, the file ``--plotlyjs directory`` writes beside the figures."""
    return ("plotly.min.js",) if args.plotlyjs == "directory" else ()


def _diverged_line(df) -> str | None:
    """"3 runs diverged (lower the learning rate)" and "2 runs were unstable (...)", or None
    when every run trained without a spike."""
    from .divergence import hint_for_name

    def hints(rows):
        found = []
        for _, row in rows.iterrows():
            hint = row.get("hint")
            if not isinstance(hint, str) or not hint:  # a file written before hints existed
                hint = hint_for_name(row.get("optimizer"))
            if hint not in found:
                found.append(hint)
        return "; ".join(found)

    def runs(k):
        return f"{k} run{'s' if k != 1 else ''}"

    lines = []
    bad = df[df["status"] == "diverged"]
    if not bad.empty:
        lines.append(f"{runs(len(bad))} diverged ({hints(bad)})")
    if "warning" in df:
        shaky = df[(df["status"] == "ok") & df["warning"].fillna("").astype(str).str.len().gt(0)]
        if not shaky.empty:
            lines.append(f"{runs(len(shaky))} {'was' if len(shaky) == 1 else 'were'} unstable: the loss "
                         f"spiked above 3× its start ({hints(shaky)})")
    return "\n".join(lines) or None


def _coord(args) -> int:
    from .coord import coord_check, theory_slopes
    from .models import MLP
    from .optim import make_optimizer
    from .plots import OPTIMIZER_NAMES, PARAM_NAMES, coord_check_figure, save_html
    from .sweep import OPTIONS_OF
    if len(args.lr) != 1:
        raise ValueError(f"--lr: expected one value, got {args.lr}")
    _check_out_dir("--out", args.out, ("coord.csv", "exponents.csv", "coord.html") + _js(args))
    data = __import__("mupso_lite.data", fromlist=["load"]).load(args.data)
    opts = {k: v for k, v in (("damping_mode", args.damping_mode), ("inverse_interval", args.inverse_interval))
            if v is not None}
    for key in opts:   # K-FAC and FOOF only (a sweep keeps each option for the optimizers that read it)
        if key not in OPTIONS_OF[args.optimizer]:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag}: only K-FAC and FOOF read it, got {flag} {opts[key]} with "
                             f"--optimizer {args.optimizer}")

    def model_fn(width, seed=0):
        return MLP(data.d_in, data.d_out, width, args.depth, base_width=args.base_width, param=args.param,
                   activation=args.activation, seed=seed)

    total, bar = len(set(args.widths)) * len(args.seeds), []  # the bar appears once the first run starts

    def optimizer(model):  # called once per (width, seed), just before that model trains
        opt = make_optimizer(model, args.optimizer, lr=args.lr[0], damping=args.damping, param=args.param, **opts)
        if bar:
            bar[0].update(1)  # the run before this one is done
        else:
            bar.append(_coord_progress(total, enabled=not args.no_progress))
        bar[0].set_postfix_str(f"width {model.mup_width}")
        return opt
    try:
        cc = coord_check(model_fn, optimizer, args.param, widths=args.widths, steps=args.steps,
                         seeds=args.seeds, data=data, device="cpu")
        for b in bar:
            b.update(b.total - b.n)
    except BaseException:
        for b in bar:
            b.leave = False  # an error or Ctrl-C: clear the bar, leave the one-line message
        raise
    finally:
        for b in bar:
            b.close()
    cc.label = f"{args.param}/{args.optimizer}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cc.frame.to_csv(out / "coord.csv", index=False)
    cc.exponents.to_csv(out / "exponents.csv", index=False)
    theory = theory_slopes(args.param, args.optimizer, args.damping_mode or "table")
    title = (f"Coordinate check: {OPTIMIZER_NAMES[args.optimizer]}, {PARAM_NAMES[args.param]}, "
             f"base lr {args.lr[0]:g} (dotted: theory)")
    save_html(coord_check_figure(cc.frame, theory, title=title), out / "coord.html", args.plotlyjs)
    print(cc.exponents.pivot_table(index="layer", columns="step", values="slope", sort=False)
          .to_string(float_format=lambda x: f"{x:+.2f}"))
    print(cc.verdict())
    print(f"wrote {out / 'coord.csv'}, {out / 'exponents.csv'}, {out / 'coord.html'}")
    return 0


def _coord_progress(total, enabled):
    """A progress bar over the (width, seed) runs of a coordinate check, on stderr."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="coord-check", unit="run", disable=not enabled)


def _sweep(args) -> int:
    from .results import check_path
    from .sweep import sweep
    grid = {}
    if args.grid:
        try:
            grid = json.loads(Path(args.grid).read_bytes().decode("utf-8-sig"))  # an editor's BOM is fine
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
            raise ValueError(f"--grid: expected a readable JSON file, got {args.grid!r} ({e})") from None
        if not isinstance(grid, dict) or not grid:
            what = "an empty object" if grid == {} else type(grid).__name__
            raise ValueError(f"--grid: expected a JSON object of lists, got {what} in {args.grid}")
        for key, values in grid.items():
            nested = isinstance(values, list) and any(isinstance(v, (list, dict)) for v in values)
            if isinstance(values, dict) or nested:
                raise ValueError(f"--grid: expected a JSON object of lists, got {json.dumps(values)[:60]} "
                                 f"for {key!r} in {args.grid}")
    check_path(args.results, "--results", create=False)
    for key, flag in (("width", "widths"), ("lr", "lrs"), ("damping", "dampings"), ("param", "params"),
                      ("optimizer", "optimizers"), ("dataset", "datasets"), ("seed", "seeds")):
        if getattr(args, flag) is not None:
            grid[key] = getattr(args, flag)
    fixed = {"steps": args.steps, "batch_size": args.batch_size, "depth": args.depth,
             "activation": args.activation, "base_width": args.base_width}
    for key in ("damping_mode", "inverse_interval"):
        if getattr(args, key) is not None:
            fixed[key] = getattr(args, key)
    if not grid:
        raise ValueError("grid: expected at least one of --grid, --widths, --lrs, ... ; got none")
    df = sweep(grid, results=args.results, executor=args.executor, workers=args.workers,
               ray_address=args.ray_address, progress=not args.no_progress, **fixed)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"{len(df)} run{'s' if len(df) != 1 else ''} in {args.results}: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if len(df) and (line := _diverged_line(df)):
        print(line)
    return 0


def _report(args) -> int:
    import pandas as pd

    from . import plots
    from .sweep import load_results
    _check_out_dir("--out", args.out, ("summary.csv", "lr_transfer.html", "damping_transfer.html",
                                       "accuracy_vs_width.html") + _js(args))
    df = load_results(args.results)
    if df.empty:
        raise ValueError(f"results: expected at least one run in {args.results}, got none")
    missing = [k for k in ("optimizer", "param", "width", "lr", "seed") if k not in df]
    if missing:
        raise ValueError(f"results: expected runs of ml.sweep in {args.results}, got configs without "
                         f"{', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in ("train_loss", "best_loss", "test_loss", "test_accuracy") if m in df]
    for m in metrics:  # None (a diverged run) -> NaN, so that a group of diverged runs averages to NaN
        df[m] = pd.to_numeric(df[m], errors="coerce")
    keys = [k for k in ("optimizer", "param", "damping_mode", "dataset", "width", "lr", "damping")
            if k in df and df[k].notna().any()]
    summary = df.groupby(keys, dropna=False).agg(runs=("status", "size"), ok=("status", lambda s: (s == "ok").sum()),
                                                 diverged=("status", lambda s: (s == "diverged").sum()),
                                                 **{m: (m, "mean") for m in metrics}).reset_index()
    summary.to_csv(out / "summary.csv", index=False)
    written = [out / "summary.csv"]
    ok = df[df["status"] == "ok"]
    drawn = plots.drawn_runs(df)   # a diverged run is an × at the panel's edge
    if drawn["lr"].nunique() > 1:
        written.append(plots.save_html(plots.lr_transfer_figure(drawn), out / "lr_transfer.html", args.plotlyjs))
    if "damping" in drawn and drawn["damping"].nunique() > 1:
        written.append(plots.save_html(plots.damping_transfer_figure(drawn), out / "damping_transfer.html",
                                       args.plotlyjs))
    if ok["width"].nunique() > 1 and "test_accuracy" in ok:
        best = ok.loc[ok.groupby(["optimizer", "param", "width", "seed"])["train_loss"].idxmin().dropna()]
        written.append(plots.save_html(plots.accuracy_vs_width_figure(best, title="Test accuracy vs width "
                                       "(best lr per width and seed)"), out / "accuracy_vs_width.html",
                                       args.plotlyjs))
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if line := _diverged_line(df):
        print(line)
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
