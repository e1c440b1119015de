"""What the benchmark scripts share: a test COG, the window grid they read, a pixel checksum, CPU time, peak RSS."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

#: Where generated scenes are kept between runs unless ``--data-dir`` says otherwise.
DATA_ENV = "LAZYTILES_BENCH_DATA"


def data_dir(given: str | None = None) -> Path:
    """The directory that keeps generated scenes between runs: ``given``, else ``$LAZYTILES_BENCH_DATA``,
    else ``lazytiles-bench`` under the system's temporary directory."""
    path = Path(given or os.environ.get(DATA_ENV) or Path(tempfile.gettempdir()) / "lazytiles-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_cog(directory: Path, size: int) -> tuple[Path, bool]:
    """The scene COG of ``size`` px a side in ``directory``, written first if it is not there yet;
    and whether it was written now."""
    path = directory / f"scene_{size}_cog.tif"
    if path.exists():
        return path, False
    work = Path(tempfile.mkdtemp(prefix=f"scene_{size}_", dir=directory))
    try:
        written = write_cog(work, size)
        os.replace(written, path)  # atomic: a half-written scene never looks cached
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
    return path, True


def window_offsets(height: int, width: int, size: int = 512, stride: int = 256) -> list[tuple[int, int]]:
    """(row, col) of every ``size``-px window every ``stride`` px, row-major, the last row and column
    shifted inward (``lt.windows``' ``edge="shift"``)."""

    def axis(n: int) -> list[int]:
        offs = list(range(0, max(n - size, 0) + 1, stride))
        if offs[-1] + size < n:
            offs.append(n - size)
        return offs

    return [(r, c) for r in axis(height) for c in axis(width)]


def checksum(data: Any) -> int:
    """A cheap sum over a sparse lattice of pixels: equal pixels, equal sums."""
    return int(data[:, ::61, ::67].sum(dtype="int64"))


def window_crc(data: Any) -> int:
    """crc32 of every byte of a window's pixels: the per-window work of the read benchmarks."""
    import zlib

    return zlib.crc32(data)


def fold(total: int, crc: int) -> int:
    """``total`` with one more window's ``crc`` folded in (order-sensitive: same windows, same order)."""
    return (total * 1_000_003 + crc) % (1 << 61)


def run_child(args: list[str]) -> str:
    """Run ``python args...`` and return its stdout; its stderr's tail if it fails. (A child's own
    peak RSS is its ``own_peak_rss_mb()``: the parent's ``ru_maxrss`` of it would count the
    parent's memory at the fork.)"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def best_and_median(values: list[float]) -> tuple[float, float]:
    """The largest and the median of ``values`` (rates: larger is better)."""
    import statistics

    return max(values), statistics.median(values)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    t = os.times()
    return t.user + t.system


def own_peak_rss_mb() -> float:
    """This process's peak RSS in MB (VmHWM, which exec resets; ru_maxrss would include the parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def write_cog(directory: Path, size: int, seed: int = 0, block: int = 512) -> Path:
    """A 3-band uint8 COG of imagery-like content (overviews down to one block), written 512 rows at a
    time (memory stays small)."""
    import numpy as np
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    field_tone = rng.integers(-35, 36, (size // 300 + 2, size // 260 + 2, 3))
    plain = directory / "plain.tif"
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_000, 6_000_000, 1.0, 1.0),
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
    )
    with rasterio.open(plain, "w", **profile) as ds:
        x = np.arange(size, dtype=np.float32)[None, :]
        for top in range(0, size, block):
            y = np.arange(top, min(top + block, size), dtype=np.float32)[:, None]
            terrain = 105 + 35 * np.sin(x / 700 + 1.3) * np.cos(y / 900) + 18 * np.sin((x + 2 * y) / 230)
            fields = field_tone[(y // 300).astype(int), (x // 260).astype(int)]  # (rows, cols, 3)
            roads = ((x.astype(int) % 1500 < 10) | (y.astype(int) % 1300 < 8)) * 90.0
            out = np.empty((3, len(y), size), np.uint8)
            for b, gain in enumerate((1.0, 0.92, 0.75)):
                noise = rng.normal(0, 2.5, (len(y), size))
                out[b] = np.clip(terrain * gain + fields[..., b] + roads + noise, 0, 255)
            ds.write(out, window=Window(0, top, size, len(y)))
    path = directory / "scene_cog.tif"
    rasterio.shutil.copy(plain, path, driver="COG", compress="DEFLATE", blocksize=block, overviews="AUTO")
    plain.unlink()
    return path
