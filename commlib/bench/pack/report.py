"""The results as a table and a summary: speedups, the traffic limit, shapes where a method is slower."""

from __future__ import annotations

import statistics

BIG_BLOCK = 256  # blocks of at least this many bytes should pack near memcpy speed
BIG_OBJECT = 1 << 20  # objects of at least this many bytes: the pack engine against the memory-traffic limit
SMALL_OBJECT = 64 << 10  # objects below this: auto must never be slower than MPI_Pack


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(rows: list[dict]) -> dict:
    """Median speedups over MPI_Pack per kind of shape, the traffic limit reached, and where strided loses."""
    groups = {"2D": [r for r in rows if r["kind"] == "2D"], "3D": [r for r in rows if r["kind"] == "3D"], "all": rows}
    speedup = {
        g: {
            "shapes": len(rs),
            "strided_vs_mpi": _median([r["speedup_strided_vs_mpi"] for r in rs]),
            "auto_vs_mpi": _median([r["speedup_auto_vs_mpi"] for r in rs]),
        }
        for g, rs in groups.items()
    }
    big = [r["strided_pct_memcpy"] for r in rows if r["block"] >= BIG_BLOCK]
    slower = [
        {
            "name": r["name"],
            "speedup_strided_vs_mpi": r["speedup_strided_vs_mpi"],
            "auto_engine": r["auto_engine"],
            "speedup_auto_vs_mpi": r["speedup_auto_vs_mpi"],
        }
        for r in rows
        if r["speedup_strided_vs_mpi"] < 1.0
    ]
    big_objects = [r for r in rows if r["packed_bytes"] >= BIG_OBJECT]
    traffic = {}
    for m in ("strided", "auto"):
        pct = [r["pct_traffic_limit"][m] for r in big_objects]
        traffic[m] = {"min": min(pct), "median": _median(pct)} if pct else {}
    small = [r for r in rows if r["packed_bytes"] < SMALL_OBJECT]
    return {
        "traffic_limit_big_objects": {"min_bytes": BIG_OBJECT, "shapes": len(big_objects), **traffic},
        "small_objects_auto_vs_mpi": {
            "max_bytes": SMALL_OBJECT,
            "shapes": len(small),
            "worst": min((r["speedup_auto_vs_mpi"] for r in small), default=None),
            "worst_shape": min(small, key=lambda r: r["speedup_auto_vs_mpi"])["name"] if small else None,
        },
        "median_speedup": speedup,
        "strided_pct_memcpy_big_blocks": {
            "min_block": BIG_BLOCK,
            "shapes": len(big),
            "min": min(big) if big else None,
            "median": _median(big),
        },
        "strided_slower_than_mpi": slower,
    }


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_table(rows: list[dict]) -> str:
    """One row per shape: GB/s of each method, the engine auto chose, speedups and strided as % of memcpy."""
    cols = f"{'MPI':>7} {'strided':>7} {'auto':>7} {'engine':<7} {'memcpy':>7}"
    top = f"{'':<22} {'':>9} {' GB/s ':-^{len(cols)}} {' speedup vs MPI ':-^16} {'strided':>8}"
    head = f"{'shape':<22} {'packed B':>9} {cols} {'strided':>7} {'auto':>8} {'%memcpy':>8}"
    lines = [top, head, "-" * len(head)]
    kind = None
    for r in rows:
        if kind is not None and r["kind"] != kind:
            lines.append("")
        kind = r["kind"]
        g = r["gbps"]
        lines.append(
            f"{r['name']:<22} {r['packed_bytes']:>9} {g['mpi']:>7.2f} {g['strided']:>7.2f} {g['auto']:>7.2f}"
            f" {r['auto_engine']:<7} {g['memcpy']:>7.2f} {r['speedup_strided_vs_mpi']:>6.2f}x"
            f" {r['speedup_auto_vs_mpi']:>7.2f}x {r['strided_pct_memcpy']:>7.1f}%"
        )
    lines.append("GB/s = packed bytes / median time per call / 1e9; speedup = MPI time / time; engine: auto's choice")
    lines.append(
        "memory-traffic limit: memcpy moving the same traffic (the 64-byte lines the type map touches + packed bytes)"
    )
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """The summary as lines of text, after the table."""
    sp = summary["median_speedup"]
    labels = {"2D": "2D matrix", "3D": "3D subarrays", "all": "all"}
    lines = ["Median speedup over MPI_Pack:", f"  {'':<28} {'strided':>8} {'auto':>8}"]
    for g, label in labels.items():
        s = sp[g]
        lines.append(
            f"  {label + ' (' + str(s['shapes']) + ' shapes)':<28}"
            f" {_fmt(s['strided_vs_mpi'], '8.2f', 'x')} {_fmt(s['auto_vs_mpi'], '8.2f', 'x')}"
        )
    big = summary["strided_pct_memcpy_big_blocks"]
    lines.append(
        f"Strided as % of memcpy, blocks >= {big['min_block']} B ({big['shapes']} shapes):"
        f" min {_fmt(big['min'], '.1f', '%')}, median {_fmt(big['median'], '.1f', '%')}"
    )
    traffic = summary["traffic_limit_big_objects"]
    for m in ("strided", "auto"):
        t = traffic[m]
        lines.append(
            f"{m} as % of the memory-traffic limit, objects >= {traffic['min_bytes'] >> 20} MiB ({traffic['shapes']}"
            f" shapes): min {_fmt(t.get('min'), '.1f', '%')}, median {_fmt(t.get('median'), '.1f', '%')}"
        )
    small = summary["small_objects_auto_vs_mpi"]
    lines.append(
        f"auto vs MPI_Pack, objects < {small['max_bytes'] >> 10} KiB ({small['shapes']} shapes): worst"
        f" {_fmt(small['worst'], '.2f', 'x')} ({small['worst_shape']})"
    )
    slower = summary["strided_slower_than_mpi"]
    lines.append(f"Strided slower than MPI_Pack ({len(slower)} shapes):")
    for s in slower:
        lines.append(
            f"  {s['name']:<22} strided {s['speedup_strided_vs_mpi']:.2f}x;"
            f" auto chose {s['auto_engine']} ({s['speedup_auto_vs_mpi']:.2f}x)"
        )
    if not slower:
        lines.append("  none")
    return "\n".join(lines)
