"""Merge benchmark: lt.merge against a straightforward greedy pairwise merge, on a dense scene.

The scene is a grid of small objects (8-34 px, >= 3 px apart) cut into 512 px windows with 25 %
overlap. A simulated detector reports, per window, every object it sees at least 4 px of, clipped to the window, with
each uncut edge jittered by up to 1 px and a score that falls with the hidden fraction; boxes at an
inner window edge are flagged partial. About 100 000 boxes in all.

The baseline is the merge rule of ``lt.merge`` written the plain way, as SAHI's ``greedy_nmm`` does:
rank all boxes; take the best, compare it with every remaining box (numpy, one row at a time), remove
its matches; then join the leftover pieces by comparing each with every remaining box. O(n^2). Both
must give the same boxes, scores, labels and window indices, exactly.

    python benchmarks/bench_merge.py                   # 100 000 boxes; baseline on the first 30 000
    python benchmarks/bench_merge.py --full-baseline   # baseline on all 100 000 (about 10 CPU minutes)
    python benchmarks/bench_merge.py --quick           # seconds; what the test suite runs

By default the baseline runs on the boxes of the first windows (about ``--baseline-boxes``);
lt.merge is timed on the same subset and on everything, and the baseline's time on all boxes is
extrapolated as ``t * (N / n) ** 2``, marked as such. ``--full-baseline`` measures it instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lazytiles as lt
from lazytiles.detections import partial_flags
from lazytiles.merging.streaming import Merger

CELL = 40  # one object per CELL x CELL px cell (90 % of the cells)
SIZE, OVERLAP = 512, 0.25


# -- the scene -------------------------------------------------------------------------------------


def make_scene(n_boxes: int, seed: int = 0):
    """(windows, per-window detections, truth boxes) with about ``n_boxes`` detections."""
    rng = np.random.default_rng(seed)
    # an object is seen by ~(SIZE / stride) ** 2 windows: about 1.9 boxes per object, 0.9 objects per cell
    width = max(SIZE, int(np.sqrt(n_boxes / 1.9 / 0.9)) * CELL // SIZE * SIZE)
    height = max(SIZE, round(n_boxes / 1.9 / 0.9 / (width // CELL)) * CELL)
    rows, cols = np.mgrid[0 : height // CELL, 0 : width // CELL]
    rows, cols = rows.ravel(), cols.ravel()
    keep = rng.random(len(rows)) < 0.9
    rows, cols = rows[keep], cols[keep]
    w = rng.integers(8, CELL - 6 + 1, len(rows))
    h = rng.integers(8, CELL - 6 + 1, len(rows))
    x0 = cols * CELL + 3 + (rng.random(len(rows)) * (CELL - 6 - w + 1)).astype(int)
    y0 = rows * CELL + 3 + (rng.random(len(rows)) * (CELL - 6 - h + 1)).astype(int)
    truth = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(float)
    labels = rng.integers(0, 3, len(truth))

    blank = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, height, width))  # no pixels needed
    wins = lt.windows(lt.ArraySource(blank, tile_shape=SIZE), SIZE, overlap=OVERLAP)
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
    return wins, per_window, truth, labels


# -- the baseline: the same rule, the straightforward way --------------------------------------------


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


def baseline_merge(dets: lt.Detections, wins, *, iou=0.5, method="union", metric="ios", margin=1.0) -> lt.Detections:
    """Greedy pairwise merge (SAHI greedy_nmm style, class-aware), then join leftover pieces. O(n^2)."""
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
        if method == "nms":
            out_b.append(b[leader])
            out_s.append(s[leader])
        else:
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


# -- running it --------------------------------------------------------------------------------------


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def accuracy(found: lt.Detections, truth: np.ndarray) -> tuple[int, int, int]:
    """(objects matched once, duplicates, unmatched boxes) at IoU >= 0.5, one STRtree query."""
    tree = shapely.STRtree(shapely.box(*truth.T))
    fi, ti = tree.query(shapely.box(*found.boxes.T), predicate="intersects")
    fb, tb = found.boxes[fi], truth[ti]
    w = np.clip(np.minimum(fb[:, 2], tb[:, 2]) - np.maximum(fb[:, 0], tb[:, 0]), 0, None)
    h = np.clip(np.minimum(fb[:, 3], tb[:, 3]) - np.maximum(fb[:, 1], tb[:, 1]), 0, None)
    inter = w * h
    union = (fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1]) + (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1]) - inter
    hit = inter / union >= 0.5
    per_truth = np.bincount(ti[hit], minlength=len(truth))
    per_found = np.bincount(fi[hit], minlength=len(found))
    return int((per_truth == 1).sum()), int((per_truth > 1).sum()), int((per_found == 0).sum())


def same(a: lt.Detections, b: lt.Detections) -> bool:
    return a == b and np.array_equal(a.partial, b.partial)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boxes", type=int, default=100_000, help="detections in the scene (about)")
    p.add_argument(
        "--baseline-boxes", type=int, default=30_000, help="run the baseline on about this many (default: 30000)"
    )
    p.add_argument("--full-baseline", action="store_true", help="run the baseline on all boxes (about 10 CPU minutes)")
    p.add_argument("--method", choices=["union", "nms"], default="union")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small scene, for the test suite")
    args = p.parse_args(argv)
    if args.quick:
        args.boxes, args.full_baseline = 4000, True
    if args.full_baseline:
        args.baseline_boxes = None
    wins, per_window, truth, _ = make_scene(args.boxes, args.seed)
    dets = lt.Detections.concat(per_window)
    n = len(dets)

    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, shapely {shapely.__version__}, "
        f"lazytiles {lt.__version__}, {os.cpu_count()} CPUs; {n} boxes ({int(dets.partial.sum())} partial) "
        f"of {len(truth)} objects in {len(wins)} windows of {SIZE} px, overlap {OVERLAP}; method={args.method}"
    )
    merged, t_batch = timed(lt.merge, dets, windows=wins, method=args.method)
    merger = Merger(wins, lt.MergeRule(method=args.method))
    held = 0

    def stream():
        nonlocal held
        for d in per_window:
            merger.add(d)
            held = max(held, merger.held)
        return merger.result()

    streamed, t_stream = timed(stream)
    print(
        f"# lt.merge: {len(merged)} objects; stream equals batch: {same(streamed, merged)}; "
        f"stream held at most {held} boxes of {n}"
    )
    found_once, dup, false = accuracy(merged, truth)
    print(f"# vs truth (IoU >= 0.5): {found_once}/{len(truth)} found once, {dup} duplicated, {false} boxes unmatched")

    m = len(per_window)
    if args.baseline_boxes is not None and args.baseline_boxes < n:
        m = int(np.searchsorted(np.cumsum([len(d) for d in per_window]), args.baseline_boxes)) + 1
    sub = lt.Detections.concat(per_window[:m])
    base, t_base = timed(baseline_merge, sub, wins, method=args.method)
    ours_sub, t_ours_sub = timed(lt.merge, sub, windows=wins, method=args.method)
    equal = same(base, ours_sub)
    print(f"# baseline on {len(sub)} boxes ({m} windows): same result as lt.merge: {equal}")

    rows = [("case", "baseline", "lazytiles", "ratio")]

    def row(case: str, base: float, ours: float, guess: bool = False) -> None:
        base_text = f"~{base:.0f} s (extrapolated n^2)" if guess else f"{base:.2f} s"
        rows.append((case, base_text, f"{ours:.2f} s", f"{'~' if guess else ''}{base / ours:.0f}x"))

    if len(sub) == n:
        row(f"merge {n} boxes (batch)", t_base, t_batch)
        row(f"merge {n} boxes (streaming)", t_base, t_stream)
    else:
        est = t_base * (n / len(sub)) ** 2
        row(f"merge {len(sub)} boxes (batch)", t_base, t_ours_sub)
        row(f"merge {n} boxes (batch)", est, t_batch, guess=True)
        row(f"merge {n} boxes (streaming)", est, t_stream, guess=True)
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print(" | ".join(v.ljust(wd) for v, wd in zip(r, widths)))
    ok = equal and same(streamed, merged)
    if not ok:
        print("MISMATCH: lt.merge and the baseline (or streaming and batch) differ", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
