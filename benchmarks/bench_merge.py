"""Merge benchmark: lt.merge against SAHI's own merge (``sahi.postprocess.combine``) on the same boxes.

The scene is a square grid of small objects (8-34 px, >= 6 px apart) cut into 256 px windows with
25 % overlap. A simulated detector reports, per window, every object it sees at least 4 px of, clipped
to the window, with each uncut edge jittered by up to 1 px and a score that falls with the hidden
fraction; boxes at an inner window edge are flagged partial. The default 12288² scene gives 4096
windows and 168 112 boxes of 84 911 objects; ``--size 16384`` 7225 windows and 297 076 boxes.

The anchor is SAHI 0.12.8's ``batched_greedy_nmm(preds, match_metric="IOS", match_threshold=0.5)``
(``pip install -e .[bench]``): greedy non-maximum merging per class, what its ``GreedyNMMPostprocess``
(``postprocess_type="GREEDYNMM"``, ``postprocess_class_agnostic=False``) runs, on its sparse STRtree
path, numpy backend (numba falls back to the same path for this many boxes). Only that call is timed;
turning its groups into boxes (union, best score) is left out, in SAHI's favour. ``lt.merge`` runs with
its defaults (IOS 0.5, union, class-aware) as it streams over the per-window detections, and on
all the boxes at once (one ``Detections``, as SAHI gets them).

    python benchmarks/bench_merge.py                  # 12288², 4096 windows, 5 interleaved runs per case
    python benchmarks/bench_merge.py --size 16384     # 16384², 7225 windows
    python benchmarks/bench_merge.py --quick          # seconds; what the test suite runs

Each run of each case is its own process (its peak RSS is its own); runs are interleaved, so a busy
spell of the machine hits every case alike; best and median are printed. Both results are checked
against the scene's truth and against each other. Besides, an exactness check: the merge rule of
``lt.merge`` written one box at a time (greedy one-against-all, O(n²)) on the first ``--oracle-boxes``
boxes must give exactly lt.merge's result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lazytiles as lt
from lazytiles.detections import partial_flags
from lazytiles.merging.streaming import Merger

HERE = Path(__file__).resolve()
CELL = 40  # one object per CELL x CELL px cell (90 % of the cells)
CASES = ("lazytiles", "lazytiles-batch", "sahi")
NAMES = {
    "lazytiles": "lt.merge, streaming",
    "lazytiles-batch": "lt.merge, all boxes at once",
    "sahi": "SAHI batched_greedy_nmm",
}


# -- the scene -------------------------------------------------------------------------------------


def make_scene(size: int, window: int = 256, overlap: float = 0.25, seed: int = 0):
    """(windows, per-window detections, truth boxes) on a ``size`` x ``size`` scene."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size // CELL, 0 : size // CELL]
    rows, cols = rows.ravel(), cols.ravel()
    keep = rng.random(len(rows)) < 0.9
    rows, cols = rows[keep], cols[keep]
    w = rng.integers(8, CELL - 6 + 1, len(rows))
    h = rng.integers(8, CELL - 6 + 1, len(rows))
    x0 = cols * CELL + 3 + (rng.random(len(rows)) * (CELL - 6 - w + 1)).astype(int)
    y0 = rows * CELL + 3 + (rng.random(len(rows)) * (CELL - 6 - h + 1)).astype(int)
    truth = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(float)
    labels = rng.integers(0, 3, len(truth))

    blank = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, size, size))  # no pixels needed
    wins = lt.windows(lt.ArraySource(blank, tile_shape=window), window, overlap=overlap)
    pw = wins.pixel_windows().astype(float)
    rects = np.stack([pw[:, 0], pw[:, 1], pw[:, 0] + pw[:, 2], pw[:, 1] + pw[:, 3]], axis=1)
    tree = shapely.STRtree(shapely.box(*truth.T))
    wi, ti = tree.query(shapely.box(*rects.T), predicate="intersects")
    order = np.lexsort((ti, wi))
    wi, ti = wi[order], ti[order]
    seen = np.clip(truth[ti], np.tile(rects[wi, :2], 2), np.tile(rects[wi, 2:], 2))
    cut = seen != truth[ti]
    visible = (seen[:, 2] - seen[:, 0]) * (seen[:, 3] - seen[:, 1])
    ok = np.minimum(seen[:, 2] - seen[:, 0], seen[:, 3] - seen[:, 1]) >= 4  # no detector sees a sliver
    wi, ti, seen, cut, visible = wi[ok], ti[ok], seen[ok], cut[ok], visible[ok]
    jitter = rng.integers(-1, 2, seen.shape) * ~cut  # a detector's noise on the edges it can see
    boxes = np.clip(seen + jitter, np.tile(rects[wi, :2], 2), np.tile(rects[wi, 2:], 2))
    area = (truth[ti, 2] - truth[ti, 0]) * (truth[ti, 3] - truth[ti, 1])
    scores = (visible / area * rng.uniform(0.7, 1.0, len(ti))).astype(np.float32)

    per_window = []
    bounds = np.searchsorted(wi, np.arange(len(wins) + 1))
    area_win = wins.area
    for k in range(len(wins)):
        s = slice(bounds[k], bounds[k + 1])
        local = boxes[s] - np.tile(rects[k, :2], 2)
        per_window.append(
            lt.Detections(
                boxes[s],
                scores[s],
                labels[ti[s]],
                np.full(bounds[k + 1] - bounds[k], int(wins.indices[k])),
                partial=partial_flags(local, wins.pixel_window(k), area_win),
            )
        )
    return wins, per_window, truth


# -- the two merges ----------------------------------------------------------------------------------


def sahi_merge(dets: lt.Detections) -> tuple[lt.Detections, float]:
    """SAHI's greedy NMM on ``dets`` (timed) and its groups as boxes (not timed): union, best score."""
    from sahi.postprocess.backends import set_postprocess_backend
    from sahi.postprocess.combine import batched_greedy_nmm

    set_postprocess_backend("numpy")
    preds = np.column_stack([dets.boxes, dets.scores.astype(np.float64), dets.labels.astype(np.float64)])
    t = time.perf_counter()
    keep_to_merge = batched_greedy_nmm(preds, match_metric="IOS", match_threshold=0.5)
    seconds = time.perf_counter() - t
    leader = np.empty(len(dets), np.int64)
    for keep, merged in keep_to_merge.items():
        leader[keep] = keep
        leader[merged] = keep
    keep = np.unique(leader)
    slot = np.searchsorted(keep, leader)
    b = dets.boxes
    out = np.empty((len(keep), 4))
    out[:, :2] = np.inf
    out[:, 2:] = -np.inf
    np.minimum.at(out[:, 0], slot, b[:, 0])
    np.minimum.at(out[:, 1], slot, b[:, 1])
    np.maximum.at(out[:, 2], slot, b[:, 2])
    np.maximum.at(out[:, 3], slot, b[:, 3])
    scores = np.zeros(len(keep), np.float32)
    np.maximum.at(scores, slot, dets.scores)
    return lt.Detections(out, scores, dets.labels[keep], dets.window_index[keep]), seconds


def clear_peak_rss() -> float:
    """Reset this process's peak RSS to its current RSS (Linux); the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 / 1e6 for line in f if line.startswith("VmRSS:"))
    except OSError:
        return float("nan")


def run_case(case: str, size: int, window: int, seed: int) -> dict:
    """One run of one case, in this process: the merge's seconds, its peak RSS over the input's."""
    from _measure import own_peak_rss_mb

    wins, per_window, _ = make_scene(size, window, seed=seed)
    dets = lt.Detections.concat(per_window)
    if case == "sahi":  # imports and first-call set-up before the measurement
        sahi_merge(per_window[0])
    else:
        lt.merge(per_window[0], windows=wins, progress=False)
        lt.merge(per_window[:1], progress=False)
    before = clear_peak_rss()
    if case == "sahi":
        found, seconds = sahi_merge(dets)
    else:
        given = dets if case == "lazytiles-batch" else per_window
        t = time.perf_counter()
        found = lt.merge(given, windows=wins, progress=False)
        seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "rss_input_mb": before,
        "rss_peak_mb": own_peak_rss_mb(),
        "boxes": found.boxes.tolist(),
        "labels": found.labels.tolist(),
    }


def in_subprocess(args: argparse.Namespace, case: str) -> dict:
    cmd = [sys.executable, str(HERE), "--case", case, "--size", str(args.size), "--window", str(args.window)]
    done = subprocess.run([*cmd, "--seed", str(args.seed)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# -- checks ------------------------------------------------------------------------------------------


def pair_up(a: np.ndarray, b: np.ndarray, la: np.ndarray, lb: np.ndarray, iou: float = 0.5) -> tuple[int, int]:
    """(boxes of ``a`` equal to a box of ``b`` with the same label, those with IoU >= ``iou`` to one)."""
    tree = shapely.STRtree(shapely.box(*b.T))
    ai, bi = tree.query(shapely.box(*a.T), predicate="intersects")
    same_label = la[ai] == lb[bi]
    ai, bi = ai[same_label], bi[same_label]
    pa, pb = a[ai], b[bi]
    w = np.clip(np.minimum(pa[:, 2], pb[:, 2]) - np.maximum(pa[:, 0], pb[:, 0]), 0, None)
    h = np.clip(np.minimum(pa[:, 3], pb[:, 3]) - np.maximum(pa[:, 1], pb[:, 1]), 0, None)
    inter = w * h
    union = (pa[:, 2] - pa[:, 0]) * (pa[:, 3] - pa[:, 1]) + (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1]) - inter
    equal = np.all(pa == pb, axis=1)
    close = inter / union >= iou
    return len(np.unique(ai[equal])), len(np.unique(ai[close]))


def accuracy(boxes: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(objects matched once, objects matched more than once, boxes matching no object) at IoU >= 0.5."""
    tree = shapely.STRtree(shapely.box(*truth.T))
    fi, ti = tree.query(shapely.box(*boxes.T), predicate="intersects")
    fb, tb = boxes[fi], truth[ti]
    w = np.clip(np.minimum(fb[:, 2], tb[:, 2]) - np.maximum(fb[:, 0], tb[:, 0]), 0, None)
    h = np.clip(np.minimum(fb[:, 3], tb[:, 3]) - np.maximum(fb[:, 1], tb[:, 1]), 0, None)
    inter = w * h
    union = (fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1]) + (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1]) - inter
    hit = inter / union >= 0.5
    per_truth = np.bincount(ti[hit], minlength=len(truth))
    per_found = np.bincount(fi[hit], minlength=len(boxes))
    return int((per_truth == 1).sum()), int((per_truth > 1).sum()), int((per_found == 0).sum())


def _metric_one_to_many(a, wa, b, wb, metric, margin):
    """Seam-aware overlap of box ``a`` (window ``wa``) with each box of ``b`` (windows ``wb``)."""
    same = np.isnan(wb[:, 0]) | np.isnan(wa[0]) | np.all(wb == wa, axis=1)
    inter, area_a, area_b = np.ones(len(b)), np.ones(len(b)), np.ones(len(b))
    corner = np.ones(len(b), bool)
    for lo, hi in ((0, 2), (1, 3)):
        # plain comparison where the windows are the same (or unknown)
        s0 = np.where(same, -np.inf, np.maximum(wa[lo], wb[:, lo]))
        s1 = np.where(same, np.inf, np.minimum(wa[hi], wb[:, hi]))
        a0, a1 = np.clip(a[lo], s0, s1), np.clip(a[hi], s0, s1)
        b0, b1 = np.clip(b[:, lo], s0, s1), np.clip(b[:, hi], s0, s1)
        li = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
        la, lb = np.clip(a1 - a0, 0, None), np.clip(b1 - b0, 0, None)
        line = s1 == s0
        both_reach = (a[hi] >= s0 - margin) & (a[lo] <= s0 + margin)
        both_reach &= (b[:, hi] >= s0 - margin) & (b[:, lo] <= s0 + margin)
        li = np.where(line, both_reach, np.where(s1 > s0, li, 0.0))
        inter *= li
        area_a *= np.where(line, 1.0, la)
        area_b *= np.where(line, 1.0, lb)
        corner &= line
    inter[corner] = 0.0
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, inter / denom, 0.0)


def oracle_merge(dets: lt.Detections, wins, *, iou=0.5, metric="ios", margin=1.0) -> lt.Detections:
    """lt.merge's rule one box at a time: greedy one-against-all, then join leftover pieces. O(n^2)."""
    n = len(dets)
    b, s, lab, part = dets.boxes, dets.scores, dets.labels, dets.partial
    pw = wins.pixel_windows().astype(float)
    where = {int(i): (c, r, c + w, r + h) for i, (c, r, w, h) in zip(wins.indices, pw)}
    wr = np.array([where.get(int(k), (np.nan,) * 4) for k in dets.window_index]).reshape(-1, 4)
    order = np.lexsort((np.arange(n), lab, b[:, 2], b[:, 3], b[:, 0], b[:, 1], -s.astype(float), part))
    group = np.full(n, -1)
    remaining = order
    while len(remaining) and not part[remaining[0]]:  # the best complete box takes its matches
        k, rest = remaining[0], remaining[1:]
        m = (lab[rest] == lab[k]) & (_metric_one_to_many(b[k], wr[k], b[rest], wr[rest], metric, margin) >= iou)
        group[k] = k
        group[rest[m]] = k
        remaining = rest[~m]
    while len(remaining):  # leftover pieces: join everything they match, transitively
        k = remaining[0]
        group[k], queue, remaining = k, [k], remaining[1:]
        while queue and len(remaining):
            p = queue.pop()
            m = (lab[remaining] == lab[p]) & (
                _metric_one_to_many(b[p], wr[p], b[remaining], wr[remaining], metric, margin) >= iou
            )
            group[remaining[m]] = k
            queue.extend(remaining[m].tolist())
            remaining = remaining[~m]
    out_b, out_s, out_l, out_w, out_p = [], [], [], [], []
    members_of: dict[int, list[int]] = {}
    for k in range(n):
        members_of.setdefault(int(group[k]), []).append(k)
    for leader, members in members_of.items():
        members = np.array(members)
        complete = members[~part[members]]
        use = complete if len(complete) else members
        out_b.append([b[use, 0].min(), b[use, 1].min(), b[use, 2].max(), b[use, 3].max()])
        out_s.append(s[members].max())
        out_l.append(lab[leader])
        out_w.append(dets.window_index[leader])
        out_p.append(len(complete) == 0)
    ob = np.array(out_b, float).reshape(-1, 4)
    os_ = np.array(out_s, np.float32)
    ol, ow = np.array(out_l, np.int64), np.array(out_w, np.int64)
    o = np.lexsort((ow, ol, ob[:, 2], ob[:, 3], ob[:, 0], ob[:, 1], -os_.astype(float)))
    return lt.Detections(ob[o], os_[o], ol[o], ow[o], partial=np.array(out_p, bool)[o])


def same(a: lt.Detections, b: lt.Detections) -> bool:
    return a == b and np.array_equal(a.partial, b.partial)


# -- running it --------------------------------------------------------------------------------------


def has_sahi() -> bool:
    try:
        import sahi.postprocess.combine  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12288, help="scene width and height in px (default 12288)")
    p.add_argument("--window", type=int, default=256, help="window size in px, overlap 0.25 (default 256)")
    p.add_argument("--repeat", type=int, default=5, help="runs per case, interleaved (default 5)")
    p.add_argument("--oracle-boxes", type=int, default=6000, help="exactness check on about this many boxes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small scene, one run: for the test suite")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one run in this process
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.window, args.seed)))
        return 0
    if args.quick:
        args.size, args.repeat, args.oracle_boxes = 2048, 1, 10**9

    wins, per_window, truth = make_scene(args.size, args.window, seed=args.seed)
    dets = lt.Detections.concat(per_window)
    n = len(dets)
    sahi_version = "not installed"
    if has_sahi():
        import sahi

        sahi_version = sahi.__version__
    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, shapely {shapely.__version__}, "
        f"lazytiles {lt.__version__}, sahi {sahi_version}, {os.cpu_count()} CPUs"
    )
    print(
        f"# {args.size}² scene: {n} boxes ({int(dets.partial.sum())} partial) of {len(truth)} objects in "
        f"{len(wins)} windows of {args.window} px, overlap 0.25"
    )

    merged = lt.merge(dets, windows=wins, progress=False)
    merger = Merger(wins)
    held = 0
    for d in per_window:
        merger.add(d)
        held = max(held, merger.held)
    streamed = merger.result()
    print(
        f"# lt.merge: {len(merged)} objects; stream equals batch: {same(streamed, merged)}; held at most {held} boxes"
    )
    once, dup, stray = accuracy(merged.boxes, truth)
    print(
        f"# lt.merge vs truth (IoU >= 0.5): {once}/{len(truth)} found once, {dup} duplicated, {stray} boxes unmatched"
    )

    m = int(np.searchsorted(np.cumsum([len(d) for d in per_window]), args.oracle_boxes)) + 1
    sub = lt.Detections.concat(per_window[:m])
    equal = same(oracle_merge(sub, wins), lt.merge(sub, windows=wins, progress=False))
    print(f"# exactness check, the rule one box at a time on {len(sub)} boxes: same result as lt.merge: {equal}")

    cases = [c for c in CASES if c != "sahi" or has_sahi()]
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for _ in range(args.repeat):  # interleaved, so a busy spell of the machine hits every case alike
        for case in cases:
            runs[case].append(in_subprocess(args, case))
    ok = equal and same(streamed, merged)

    if "sahi" in runs:
        theirs = runs["sahi"][0]
        sb, sl = np.array(theirs["boxes"]).reshape(-1, 4), np.array(theirs["labels"])
        s_once, s_dup, s_stray = accuracy(sb, truth)
        print(
            f"# SAHI vs truth (IoU >= 0.5): {s_once}/{len(truth)} found once, {s_dup} duplicated, {s_stray} boxes unmatched"
        )
        exact, close = pair_up(merged.boxes, sb, merged.labels, sl)
        print(
            f"# lt.merge {len(merged)} objects, SAHI {len(sb)}: {exact} of lt.merge's boxes equal one of SAHI's, "
            f"{close} have one at IoU >= 0.5"
        )
    else:
        print("# sahi is not installed (pip install -e .[bench]): lt.merge timed alone")

    rows = [("case", "best s", "median s", "SAHI / case (best, median)", "peak RSS MB (input)")]
    for case in cases:
        t = [r["seconds"] for r in runs[case]]
        ratio = "-"
        if "sahi" in runs:
            s = [r["seconds"] for r in runs["sahi"]]
            ratio = f"{min(s) / min(t):.2f}x, {statistics.median(s) / statistics.median(t):.2f}x"
        peak = max(r["rss_peak_mb"] for r in runs[case])
        base = max(r["rss_input_mb"] for r in runs[case])
        rows.append((NAMES[case], f"{min(t):.3f}", f"{statistics.median(t):.3f}", ratio, f"{peak:.0f} ({base:.0f})"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(v.ljust(wd) for v, wd in zip(r, widths)))
    if not ok:
        print("MISMATCH: lt.merge and the exactness check (or streaming and batch) differ", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
