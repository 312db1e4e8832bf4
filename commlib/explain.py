"""``python -m commlib explain``: what the cost model predicts and chooses, and why.

For a datatype spec (``"MPI.DOUBLE.Create_vector(512, 4, 512)"``) it prints
the canonical form, the features the model sees, each pack engine's and each
strategy's predicted time and the choice. For a recorded run (the JSON that
``COMMLIB_RECORD`` or :meth:`commlib.interposer.session.Session.save_run` writes) it
does the same per recorded shape, beside the time that was observed.
``--plot FILE.png`` draws measured against predicted (matplotlib, the
``plot`` extra).

Specs are parsed, never evaluated: a predefined ``MPI.<TYPE>`` followed by
type constructor calls whose arguments are integer literals, lists of them,
``MPI.ORDER_C``/``MPI.ORDER_FORTRAN`` or other specs.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from pathlib import Path
from typing import Any

from mpi4py import MPI

from datatypes import model as cost_model
from datatypes.canonical import StridedBlock, canonicalize

__all__ = ["CONSTRUCTORS", "main", "parse_spec"]

CONSTRUCTORS = frozenset(
    {
        "Create_contiguous",
        "Create_vector",
        "Create_hvector",
        "Create_indexed",
        "Create_hindexed",
        "Create_indexed_block",
        "Create_hindexed_block",
        "Create_subarray",
        "Create_darray",
        "Create_resized",
        "Create_struct",
        "Dup",
    }
)
_CONSTANTS = {"ORDER_C": MPI.ORDER_C, "ORDER_FORTRAN": MPI.ORDER_FORTRAN, "ORDER_F": MPI.ORDER_F}


class SpecError(ValueError):
    """A datatype spec outside the accepted grammar."""


def parse_spec(text: str) -> MPI.Datatype:
    """The committed datatype ``text`` describes (the caller frees it); ``SpecError`` when not understood."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"datatype spec: {text!r} is not an expression ({exc.msg})") from None
    made: list[MPI.Datatype] = []
    try:
        dt = _datatype(tree.body, text, made)
        if not isinstance(dt, MPI.Datatype):
            raise SpecError(f"datatype spec: {text!r} does not describe a datatype")
        result = dt.Dup().Commit()
    finally:
        for t in made:
            t.Free()
    return result


def _datatype(node: ast.AST, text: str, made: list[MPI.Datatype]) -> MPI.Datatype:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "MPI":
        named = getattr(MPI, node.attr, None)
        if isinstance(named, MPI.Datatype) and named.is_predefined and named != MPI.DATATYPE_NULL:
            return named
        raise SpecError(f"datatype spec: MPI.{node.attr} is not a predefined datatype (in {text!r})")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        method = node.func.attr
        if method not in CONSTRUCTORS:
            raise SpecError(
                f"datatype spec: {method} is not a datatype constructor (choose from {', '.join(sorted(CONSTRUCTORS))})"
            )
        base = _datatype(node.func.value, text, made)
        args = [_value(a, text, made) for a in node.args]
        kwargs = {k.arg: _value(k.value, text, made) for k in node.keywords if k.arg is not None}
        if len(kwargs) != len(node.keywords):
            raise SpecError(f"datatype spec: **arguments are not accepted (in {text!r})")
        try:
            dt = getattr(base, method)(*args, **kwargs)
        except (TypeError, ValueError, MPI.Exception) as exc:
            raise SpecError(f"datatype spec: {method}{tuple(args)} failed: {exc}") from None
        made.append(dt)
        return dt
    raise SpecError(
        f"datatype spec: cannot read {ast.unparse(node)!r} in {text!r} (expected MPI.<TYPE>.<Constructor>(...))"
    )


def _value(node: ast.AST, text: str, made: list[MPI.Datatype]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _value(node.operand, text, made)
        if isinstance(value, int):
            return -value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e, text, made) for e in node.elts]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "MPI":
        if node.attr in _CONSTANTS:
            return _CONSTANTS[node.attr]
    return _datatype(node, text, made)


# -- reports ----------------------------------------------------------------------------------------


def _us(t: float | None) -> str:
    return "not measured" if t is None else f"{t * 1e6:10.2f} us"


def explain_features(model: cost_model.Model, f: cost_model.Features, op: str, level: str) -> list[str]:
    """Lines: the features, each engine's pack + unpack, each strategy's prediction, the choices."""
    lines = [f"features: {f.nbytes} packed bytes, blocks of {f.block} B, {f.levels} level(s)"]
    engine = model.engine_for(f.nbytes, f.block, f.levels)
    lines.append("pack engines (pack + unpack):")
    for name in cost_model.ENGINES:
        p, u = model.pack_time(name, f), model.unpack_time(name, f)
        mark = "  <- chosen" if name == engine else ""
        lines.append(f"  {name:<8} {_us(p + u)}  ({p * 1e6:.2f} + {u * 1e6:.2f}){mark}")
    times = model.predict(op, f, level)
    choice = model.choose(op, f, cost_model.HOST_STRATEGIES, level)
    lines.append(f"strategies for {op} ({level}, one way, refined):")
    for name, t in times.items():
        host = name in cost_model.HOST_STRATEGIES
        mark = "  <- chosen" if name == choice else ("" if host or t is not None else "  (never chosen unmeasured)")
        lines.append(f"  {name:<8} {_us(t)}{mark}")
    return lines


def _explain_spec(args: argparse.Namespace, model: cost_model.Model, out: list[str]) -> list[dict[str, Any]]:
    dt = parse_spec(args.target)
    try:
        sb = canonicalize(dt)
        out.append(f"datatype: {args.target}, count {args.count}")
        if sb is None:
            out.append("canonical form: none (not uniformly strided): MPI handles it, nothing to choose")
            return []
        rep = sb.repeated(args.count)
        out.append(f"canonical form: {sb!r}")
        if args.count != 1:
            out.append(f"{args.count} objects: {rep!r}")
        f = cost_model.features(args.count, dt)
        out += explain_features(model, f, args.op, args.level)
        return [{"features": f, "observed": None, "label": args.target}]
    finally:
        dt.Free()


def _explain_run(args: argparse.Namespace, model: cost_model.Model, out: list[str]) -> list[dict[str, Any]]:
    data = _read_run(Path(args.target))
    out.append(f"recorded run: {args.target} (rank {data.get('rank')}, recorded with {data.get('model')})")
    shown = []
    for shape in data["shapes"]:
        f = cost_model.Features(shape["nbytes"], shape["block"], shape["levels"])
        canonical = shape.get("canonical")
        mean = shape["seconds"] / shape["timed"] if shape["timed"] else None
        out.append("")
        out.append(
            f"{shape['op']} x {shape['calls']}, count {shape['count']}, chose {shape['choice']}, "
            + (f"observed {_us(mean).strip()} ({shape['timed']} timed)" if mean else "not timed (nonblocking)")
        )
        if canonical:
            sb = StridedBlock(
                canonical["start"], tuple(canonical["counts"]), tuple(canonical["strides"]), canonical["extent"]
            )
            out.append(f"canonical form: {sb!r}")
        out += explain_features(model, f, shape["op"], args.level)
        shown.append(
            {"features": f, "observed": mean, "choice": shape["choice"], "op": shape["op"], "label": shape["op"]}
        )
    if not data["shapes"]:
        out.append("no shape was recorded")
    return shown


def _read_run(path: Path) -> dict[str, Any]:
    from .interposer.session import RECORD_SCHEMA

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"recorded run: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA or not isinstance(data.get("shapes"), list):
        raise SpecError(f"recorded run: {path} is not a recorded run (schema {RECORD_SCHEMA!r})")
    keys = {
        "op": str,
        "choice": str,
        "count": int,
        "nbytes": int,
        "block": int,
        "levels": int,
        "calls": int,
        "timed": int,
    }
    for shape in data["shapes"]:
        if not isinstance(shape, dict) or any(not isinstance(shape.get(k), t) for k, t in keys.items()):
            raise SpecError(f"recorded run: {path}: malformed shape entry {shape!r:.100}")
        if (
            not isinstance(shape.get("seconds"), (int, float))
            or shape["levels"] < 1
            or min(shape["nbytes"], shape["block"]) < 0
        ):
            raise SpecError(f"recorded run: {path}: malformed shape entry {shape!r:.100}")
    return data


# -- plot -------------------------------------------------------------------------------------------


def plot(model: cost_model.Model, shown: list[dict[str, Any]], path: Path, op: str, level: str) -> None:
    """Measured table points against the model's curves at the explained shapes' level counts; observed runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({min(s["features"].levels, cost_model.MAX_LEVELS) for s in shown}) or [2]
    kinds = [("pack.strided", "pack strided"), ("pack.mpi", "MPI_Pack"), (f"send.native.{level}", "native send")]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 4.2), squeeze=False)
    for ax, (kind, title) in zip(axes[0], kinds):
        table = model.table(kind, levels[0])
        ax.set_title(f"{title}, {levels[0]} level(s): measured vs model")
        if table is None:
            ax.text(0.5, 0.5, "not measured (analytic defaults)", ha="center", transform=ax.transAxes)
        else:
            for b in table.blocks:
                pts = [(n, t) for n, bb, t in table.points() if bb == b]
                line = ax.plot([n for n, _ in pts], [t for _, t in pts], "o", ms=4)[0]
                lo, hi = math.log2(table.nbytes[0]) - 1, math.log2(table.nbytes[-1]) + 1
                xs = [2 ** (lo + (hi - lo) * i / 60) for i in range(61)]
                ax.plot(xs, [table(x, b) for x in xs], "-", color=line.get_color(), lw=1, label=f"block {b}")
            ax.legend(fontsize=7)
        for s in shown:
            f = s["features"]
            t = model.pack_time(kind.split(".")[1], f) if kind.startswith("pack.") else model.base("native", f, level)
            ax.plot([f.nbytes], [t], "k*", ms=10)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("packed bytes")
        ax.set_ylabel("seconds")
    ax = axes[0][-1]
    observed = [s for s in shown if s.get("observed")]
    if observed:
        pred = [model.predict(s["op"], s["features"], level, [s["choice"]])[s["choice"]] for s in observed]
        obs = [s["observed"] for s in observed]
        ax.loglog(pred, obs, "o")
        lo, hi = min(pred + obs), max(pred + obs)
        ax.loglog([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title("recorded run: observed vs predicted")
        ax.set_xlabel("predicted seconds (chosen strategy)")
        ax.set_ylabel("observed seconds")
    else:
        f = shown[0]["features"] if shown else cost_model.Features(1 << 16, 64, 2)
        scale = [2.0**k for k in range(-8, 9)]
        for strategy in cost_model.STRATEGIES:
            ys = [
                model.predict(
                    op, cost_model.Features(max(int(f.nbytes * s), f.block), f.block, f.levels), level, [strategy]
                )[strategy]
                for s in scale
            ]
            if all(y is not None for y in ys):
                ax.plot([max(int(f.nbytes * s), f.block) for s in scale], ys, "-", label=strategy)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"strategies for {op}, block {f.block} B, {f.levels} level(s)")
        ax.set_xlabel("packed bytes")
        ax.set_ylabel("seconds (predicted)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------------


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show the cost model's predictions and choice for a datatype spec or a recorded run.",
        epilog='example: %(prog)s "MPI.DOUBLE.Create_vector(512, 4, 512)" --count 2',
    )
    parser.add_argument(
        "target", help="a datatype spec such as MPI.DOUBLE.Create_vector(512, 4, 512), or a recorded run (.json)"
    )
    parser.add_argument("--count", type=int, default=1, help="objects per message (default 1)")
    parser.add_argument("--op", default="Send", help="operation to predict (default Send)")
    parser.add_argument("--level", choices=cost_model.LEVELS, default=None, help="between ranks of one node or of two")
    parser.add_argument("--model", default=None, help="auto, analytic or a calibration file (default: COMMLIB_MODEL)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw measured vs predicted (needs matplotlib)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m commlib explain") -> int:
    """Entry point of ``python -m commlib explain``; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    if args.count < 0:
        print(f"{prog}: error: --count must be >= 0", file=sys.stderr)
        return 2
    model = cost_model.load(args.model) if args.model else cost_model.current()
    args.level = args.level or model.level
    out = [model.describe()]
    try:
        if args.target.endswith(".json") or Path(args.target).is_file():
            shown = _explain_run(args, model, out)
        else:
            shown = _explain_spec(args, model, out)
    except SpecError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(out))
    if args.plot is not None:
        try:
            plot(model, shown, args.plot, args.op, args.level)
        except ImportError:
            print(f"{prog}: error: --plot needs matplotlib (pip install 'commlib[plot]')", file=sys.stderr)
            return 2
        print(f"plot written to {args.plot}")
    return 0
