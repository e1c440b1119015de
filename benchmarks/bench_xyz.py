"""XYZ tiles over HTTP: one pass of 512-px windows (stride 256), lazytiles vs what users write today.

Writes ``--tiles`` x ``--tiles`` PNG tiles (256 px, zoom 16, imagery-like content that PNG compresses
about 1.6:1; kept between runs in ``--data-dir``), serves them from ``lazytiles.testing.tileserver``
in its own process with ``--latency`` seconds before every answer, and runs each case in its own
process (so peak RSS is per case) over the same windows, in row-major order, taking a crc32 of each:

- ``lazytiles``: ``for w in lt.windows(lt.open(template, zoom=z, cache=lt.TileCache(256 MiB)), 512,
  stride=256, bounds=...)``, one consumer thread; the source's pool (16 connections) and read-ahead
  do the fetching;
- ``dict cache + 16 threads``: a dict of decoded tiles shared by a 16-thread pool that maps a
  window-reading function over the windows (``pool.map``), with a keep-alive urllib3 pool of 16
  connections: the fair version of what users write today;
- ``per-window fetch``: for each window, GET and decode the tiles under it, no cache (only the first
  ``--baseline-windows`` windows: it is slow);
- ``decode floor``: decode every PNG once from memory on two threads: the decode time of the bound.

Every case checks its pixels against the others (a crc32 per window) and gets a fresh server, whose
own count of the requests it answered gives "requests per unique tile" (lazytiles' one extra request
is its probe of tile 0/0/0 for the tile size). Prints an environment line and ``case | windows/s |
requests per unique tile | vs dict-pool | vs bound | CPU s | peak RSS`` rows (best and median of the
interleaved runs; CPU: user + system seconds of the case's process during the pass, the server's not
included; peak RSS: the case process's own (VmHWM)). The bound is the rate the slower of two limits
allows: the network's ``tiles x latency / connections`` seconds and decoding every PNG on two
threads. Targets: requests per unique tile = 1.00, >= 0.8x the bound, RSS <= 500 MB.

    python benchmarks/bench_xyz.py                  # 32 x 32 tiles (1024), 20 ms latency, 961 windows
    python benchmarks/bench_xyz.py --size 16384     # 64 x 64 tiles (4096), 3969 windows
    python benchmarks/bench_xyz.py --quick          # 8 x 8 tiles, 5 ms latency, 49 windows (seconds)
    python benchmarks/bench_xyz.py --size 16384 --cases lazytiles --connections 8   # another pool size

``--connections`` sets the connections of lazytiles' client (``lt.HttpClient(max_connections=N)``,
default 16), of the dict-pool case, and of the bound: the sweep behind lazytiles' default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _measure import DATA_ENV, best_and_median, cpu_seconds, data_dir, own_peak_rss_mb, run_child, window_crc

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

CASES = ["lazytiles", "dict-pool", "per-window", "decode-floor"]
LABELS = {
    "lazytiles": "lazytiles, one consumer thread",
    "dict-pool": "dict cache + {connections}-thread pool",
    "per-window": "per-window fetch, no cache",
    "decode-floor": "decode floor: each PNG once, 2 threads",
}
SIZE, STRIDE, TILE, ZOOM = 512, 256, 256, 16
ORIGIN = (34000, 22000)  # tile (x, y) of the upper-left corner at ZOOM
CONNECTIONS = 16
CACHE_BYTES = 256 * 2**20  # lt.TileCache(max_bytes=...) of the lazytiles case
DECODE_THREADS = 2  # the decode floor's threads: the cores of the machine the bound is for


# -- data ------------------------------------------------------------------------------------------


def write_tiles(directory: Path, tiles: int, seed: int = 0) -> int:
    """``tiles`` x ``tiles`` PNG tiles of imagery-like content, a row of tiles at a time; total bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = tiles * TILE
    tone = rng.integers(-35, 36, (side // 300 + 2, side // 260 + 2, 3))
    x = np.arange(side, dtype=np.float32)[None, :]
    total = 0
    for row in range(tiles):
        y = np.arange(row * TILE, (row + 1) * TILE, dtype=np.float32)[:, None]
        terrain = 105 + 35 * np.sin(x / 700 + 1.3) * np.cos(y / 900) + 18 * np.sin((x + 2 * y) / 230)
        fields = tone[(y // 300).astype(int), (x // 260).astype(int)]
        roads = ((x.astype(int) % 1500 < 10) | (y.astype(int) % 1300 < 8)) * 90.0
        strip = np.empty((TILE, side, 3), np.uint8)
        for b, gain in enumerate((1.0, 0.92, 0.75)):
            strip[..., b] = np.clip(terrain * gain + fields[..., b] + roads + rng.normal(0, 3, (TILE, side)), 0, 255)
        for col in range(tiles):
            path = directory / str(ZOOM) / str(ORIGIN[0] + col) / f"{ORIGIN[1] + row}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip[:, col * TILE : (col + 1) * TILE]).save(path)
            total += path.stat().st_size
    return total


def cached_tiles(directory: Path, tiles: int) -> tuple[Path, int, bool]:
    """The ``tiles`` x ``tiles`` PNG tiles in ``directory``, written first unless an earlier run left
    them complete; their folder, total bytes, and whether they were written now."""
    folder = directory / f"xyz_{tiles}x{tiles}_z{ZOOM}"
    done = folder / "complete"
    if done.exists():
        return folder, int(done.read_text()), False
    nbytes = write_tiles(folder, tiles)
    done.write_text(str(nbytes))
    return folder, nbytes, True


def window_offsets(tiles: int) -> list[tuple[int, int]]:
    """(row, col) pixel offsets, in the zoom's world grid, of every window, row-major."""
    r0, c0 = ORIGIN[1] * TILE, ORIGIN[0] * TILE
    steps = range(0, tiles * TILE - SIZE + 1, STRIDE)
    return [(r0 + r, c0 + c) for r in steps for c in steps]


# -- the baselines' tile code ------------------------------------------------------------------------


def decode_png(body: bytes) -> Any:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(body)) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1))


def assemble(r0: int, c0: int, tile: Any) -> Any:
    """A 512-px window from ``tile(x, y)``: the copy every case makes."""
    import numpy as np

    out = np.empty((3, SIZE, SIZE), np.uint8)
    for ty in range(r0 // TILE, (r0 + SIZE - 1) // TILE + 1):
        for tx in range(c0 // TILE, (c0 + SIZE - 1) // TILE + 1):
            t = tile(tx, ty)
            ra, rb = max(r0, ty * TILE), min(r0 + SIZE, (ty + 1) * TILE)
            ca, cb = max(c0, tx * TILE), min(c0 + SIZE, (tx + 1) * TILE)
            out[:, ra - r0 : rb - r0, ca - c0 : cb - c0] = t[
                :, ra - ty * TILE : rb - ty * TILE, ca - tx * TILE : cb - tx * TILE
            ]
    return out


# -- one case, in its own process --------------------------------------------------------------------


def run_case(case: str, url: str, tiles: int, baseline_windows: int, data_dir: str) -> dict[str, Any]:
    offsets = window_offsets(tiles)
    template = url + "/{z}/{x}/{y}.png"
    sums: list[int] = []
    requests = 0
    if case == "decode-floor":
        from concurrent.futures import ThreadPoolExecutor

        bodies = [p.read_bytes() for p in sorted(Path(data_dir).rglob("*.png"))]
        seconds = cpu = float("inf")
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for _ in range(2):  # the faster of two passes: the first also warms caches and imports
                start, cpu0 = time.perf_counter(), cpu_seconds()
                for _ in pool.map(decode_png, bodies, chunksize=16):
                    pass
                seconds, cpu = min(seconds, time.perf_counter() - start), min(cpu, cpu_seconds() - cpu0)
        return {
            "case": case,
            "seconds": seconds,
            "windows": len(offsets),
            "tiles": len(bodies),
            "sums": [],
            "requests": 0,
            "rss_mb": own_peak_rss_mb(),
            "cpu_s": cpu,
        }
    if case == "lazytiles":
        import lazytiles as lt
        from lazytiles.grid import mercator_bounds

        http = {} if CONNECTIONS == 16 else {"http": lt.HttpClient(max_connections=CONNECTIONS)}  # 16: the default
        src = lt.open(template, zoom=ZOOM, cache=lt.TileCache(max_bytes=CACHE_BYTES), **http)
        left, _, _, top = mercator_bounds(ZOOM, ORIGIN[1], ORIGIN[0])
        _, bottom, right, _ = mercator_bounds(ZOOM, ORIGIN[1] + tiles - 1, ORIGIN[0] + tiles - 1)
        wins = lt.windows(src, SIZE, stride=STRIDE, bounds=(left, bottom, right, top))
        got = [(int(r), int(c)) for c, r, _, _ in wins.pixel_windows()]
        if got != offsets:
            raise SystemExit("lazytiles planned other windows than the baselines")
        start, cpu0 = time.perf_counter(), cpu_seconds()
        for w in wins:
            sums.append(window_crc(w.data))
        seconds = time.perf_counter() - start
        requests = src.stats()["requests"]
    else:
        import urllib3

        http = urllib3.PoolManager(maxsize=CONNECTIONS, block=True)
        lock = threading.Lock()

        def fetch(x: int, y: int) -> Any:
            nonlocal requests
            with lock:
                requests += 1
            response = http.request("GET", template.format(z=ZOOM, x=x, y=y))
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status} for tile {x}/{y}")
            return decode_png(response.data)

        if case == "per-window":
            offsets = offsets[:baseline_windows]
            start, cpu0 = time.perf_counter(), cpu_seconds()
            for r, c in offsets:
                sums.append(window_crc(assemble(r, c, fetch)))
            seconds = time.perf_counter() - start
        else:  # dict-pool
            from concurrent.futures import ThreadPoolExecutor

            cache: dict[tuple[int, int], Any] = {}

            def tile(x: int, y: int) -> Any:
                t = cache.get((x, y))
                if t is None:
                    t = cache[(x, y)] = fetch(x, y)
                return t

            start, cpu0 = time.perf_counter(), cpu_seconds()
            with ThreadPoolExecutor(CONNECTIONS) as pool:
                for data in pool.map(lambda rc: assemble(rc[0], rc[1], tile), offsets):
                    sums.append(window_crc(data))
            seconds = time.perf_counter() - start
    return {
        "case": case,
        "seconds": seconds,
        "windows": len(offsets),
        "tiles": tiles * tiles,
        "sums": sums,
        "requests": requests,
        "rss_mb": own_peak_rss_mb(),
        "cpu_s": cpu_seconds() - cpu0,
    }


def in_subprocess(args: list[str]) -> dict[str, Any]:
    """Run one case in a child: its JSON result (with its own peak RSS, ``rss_mb``)."""
    result: dict[str, Any] = json.loads(run_child([str(HERE), *args]).strip().splitlines()[-1])
    return result


def start_server(directory: Path, latency: float) -> tuple[subprocess.Popen[str], str]:
    """``python -m lazytiles.testing.tileserver`` in its own process (its own GIL); the URL it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazytiles.testing.tileserver", str(directory), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop_server(proc: subprocess.Popen[str]) -> dict[str, int]:
    """Stop the server; the request counts it prints on its way out."""
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def run_served(directory: Path, latency: float, args: list[str]) -> dict[str, Any]:
    """One case against a fresh server, with the server's own count of the requests it answered."""
    server, url = start_server(directory, latency)
    try:
        result = in_subprocess([*args, "--url", url])
    finally:
        counts = stop_server(server)
    result["server_requests"] = counts["requests"]
    return result


# -- the report ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 x 8 tiles, 5 ms latency (test suite)")
    parser.add_argument("--size", type=int, default=None, help="scene side in pixels: --size 16384 is 64 x 64 tiles")
    parser.add_argument("--tiles", type=int, default=None, help="tiles a side (default 32, quick 8)")
    parser.add_argument("--latency", type=float, default=None, help="seconds per request (default 0.02)")
    parser.add_argument("--baseline-windows", type=int, default=None, help="windows of the per-window case")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"keep the tiles here between runs (default ${DATA_ENV}, else lazytiles-bench in the temp dir)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="interleaved runs per case (default 3, quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="connections of every case (default 16)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CONNECTIONS
    CONNECTIONS = args.connections
    tiles = args.tiles or (args.size // TILE if args.size else 8 if args.quick else 32)
    latency = args.latency if args.latency is not None else (0.005 if args.quick else 0.02)
    baseline_windows = args.baseline_windows or (10 if args.quick else 93)
    if args.case:
        print(json.dumps(run_case(args.case, args.url, tiles, baseline_windows, args.data)))
        return 0

    import numpy as np
    import PIL
    import urllib3

    import lazytiles as lt

    cases = [c for c in args.cases.split(",") if c]
    start = time.perf_counter()
    folder, nbytes, written = cached_tiles(data_dir(args.data_dir), tiles)
    n_windows = len(window_offsets(tiles))
    how = f"written in {time.perf_counter() - start:.1f} s" if written else "kept from an earlier run"
    print(
        f"# lazytiles {lt.__version__}, urllib3 {urllib3.__version__}, Pillow {PIL.__version__}, numpy "
        f"{np.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs\n# {tiles * tiles} PNG tiles of {TILE} px at zoom {ZOOM} ({nbytes / 1e6:.0f} MB, "
        f"{how}), {latency * 1000:.0f} ms latency per request, server in its own process; {n_windows} windows "
        f"of {SIZE} px, stride {STRIDE} px, crc32 of each; each case in its own process"
    )
    repeat = args.repeat or (1 if args.quick else 3)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for _ in range(repeat):  # interleaved, so a burst of load elsewhere hurts every case alike
        for c in cases:
            runs[c].append(
                run_served(
                    folder,
                    latency,
                    [
                        "--case",
                        c,
                        "--data",
                        str(folder),
                        "--tiles",
                        str(tiles),
                        "--baseline-windows",
                        str(baseline_windows),
                        "--connections",
                        str(CONNECTIONS),
                    ],
                )
            )
    print(f"# {repeat} interleaved run{'s' * (repeat > 1)} per case: best / median")
    return report(runs, tiles * tiles, latency)


def report(runs: dict[str, list[dict[str, Any]]], n_tiles: int, latency: float) -> int:
    results = {case: min(rs, key=lambda r: r["seconds"]) for case, rs in runs.items() if rs}
    rates = {case: best_and_median([r["windows"] / r["seconds"] for r in rs]) for case, rs in runs.items() if rs}
    reference = results.get("lazytiles") or results.get("dict-pool")
    same = True
    for case, rs in runs.items():
        for r in rs:
            if r["sums"] and reference is not None and r["sums"] != reference["sums"][: len(r["sums"])]:
                same = False
                print(f"# {case} read other pixels than {reference['case']}!")
    n_windows = max(r["windows"] for r in results.values())
    floor = results.get("decode-floor")
    network_s = n_tiles * latency / CONNECTIONS
    bound: tuple[float, float] | None = None
    if floor:
        decode = [n_windows / r["seconds"] for r in runs["decode-floor"]]
        best_decode, median_decode = best_and_median(decode)
        net = n_windows / network_s
        bound = (min(net, best_decode), min(net, median_decode))
        print(
            f"# bound: network {network_s:.2f} s ({n_tiles} tiles x {latency * 1000:.0f} ms / {CONNECTIONS} "
            f"connections: {net:.0f} windows/s), PNG decode on {DECODE_THREADS} threads {best_decode:.0f} / "
            f"{median_decode:.0f} windows/s: {bound[0]:.0f} / {bound[1]:.0f} windows/s"
        )
    pool = rates.get("dict-pool")

    def vs(case: str, other: tuple[float, float] | None) -> str:
        return "-" if other is None else f"{rates[case][0] / other[0]:.2f}x / {rates[case][1] / other[1]:.2f}x"

    print(
        f"{'case':38} | {'windows/s best / median':>23} | {'req/tile':>8} | {'vs dict-pool':>13} | {'vs bound':>13} | "
        f"{'CPU s':>5} | peak RSS MB"
    )
    print(f"{'-' * 38}-|-{'-' * 23}-|-{'-' * 8}-|-{'-' * 13}-|-{'-' * 13}-|-{'-' * 5}-|-{'-' * 11}")
    for case, r in results.items():
        if case == "decode-floor":
            per_tile = "-"
        elif case == "per-window":
            per_tile = f"{r['server_requests'] / len(r['sums']) / 4:.2f}*"
        else:
            per_tile = f"{max(x['server_requests'] for x in runs[case]) / n_tiles:.2f}"
        peak = max(x["rss_mb"] for x in runs[case])
        label = LABELS[case].format(connections=CONNECTIONS)
        print(
            f"{label:38} | {rates[case][0]:10.1f} / {rates[case][1]:10.1f} | {per_tile:>8} | "
            f"{vs(case, pool):>13} | {vs(case, bound):>13} | {r['cpu_s']:5.2f} | {peak:6.0f}"
        )
    if "per-window" in results:
        print("# * per-window: requests per tile a window touches (4 for these windows); no tile is shared")
    if "lazytiles" in results:
        lazy = runs["lazytiles"]
        requests = max(x["server_requests"] for x in lazy) / n_tiles
        peak = max(x["rss_mb"] for x in lazy)
        median = rates["lazytiles"][1]
        checks = [
            ("requests per unique tile", f"{requests:.2f}", "1.00", round(requests, 2) <= 1.0),
            ("vs dict-cache pool", vs("lazytiles", pool), "-", True),
            ("vs bound", vs("lazytiles", bound), ">= 0.8x", bool(bound) and median >= 0.8 * bound[1]),
            ("peak RSS", f"{peak:.0f} MB", "<= 500 MB", peak <= 500),
        ]
        for name, value, target, ok in checks:
            print(
                f"# lazytiles {name}: {value} (target {target}){'' if target == '-' else ': met' if ok else ': NOT met'}"
            )
    print(f"# same pixels in every case: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
