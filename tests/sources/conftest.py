"""XYZ fixtures: tiles cut from an image whose pixels name their position, served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lazytiles.testing.tileserver import TileServer
from lazytiles.testing.xyztiles import XYZCoverage, write_xyz_tiles

#: Zoom and upper-left tile (x, y) of the test tiles: somewhere in Europe at about 38 m per pixel.
ZOOM = 12
ORIGIN = (2100, 1400)


def position_image(rows: int = 768, cols: int = 1024, tile: int = 256, bands: int = 3) -> np.ndarray:
    """uint8 (bands, rows, cols): band 0 holds ``col % 256``, band 1 ``row % 256``, band 2 the tile's
    number (``tile_row * 16 + tile_col + 1``) with 255 at each tile's upper-left corner, so a shifted,
    flipped or misplaced tile shows its own address in the diff. A fourth band is alpha: 200 + tile col.
    """
    r, c = np.indices((rows, cols))
    out = np.empty((bands, rows, cols), np.uint8)
    out[0] = c % 256
    if bands > 1:
        out[1] = r % 256
    if bands > 2:
        out[2] = (r // tile) * 16 + c // tile + 1
        out[2][(r % tile == 0) & (c % tile == 0)] = 255
    if bands > 3:
        out[3] = 200 + c // tile
    return out


@dataclass(frozen=True)
class XYZTree:
    """A directory of ``{z}/{x}/{y}.png`` tiles cut from ``image``, covering ``coverage``."""

    root: Path
    image: np.ndarray
    coverage: XYZCoverage

    @property
    def template(self) -> str:
        return str(self.root / "{z}" / "{x}" / "{y}.png")

    def pixels(self, window) -> np.ndarray:
        """The image's pixels under a window of the zoom's world grid (the oracle)."""
        r = int(window.row_off) - int(self.coverage.window.row_off)
        c = int(window.col_off) - int(self.coverage.window.col_off)
        return self.image[:, r : r + int(window.height), c : c + int(window.width)]


@pytest.fixture
def xyz_tree(tmp_path: Path) -> XYZTree:
    """3 x 4 tiles of 256 px at zoom 12 (768 x 1024 px), RGB PNG."""
    image = position_image()
    root = tmp_path / "tiles"
    coverage = write_xyz_tiles(image, root, zoom=ZOOM, top_left_tile=ORIGIN)
    return XYZTree(root, image, coverage)


@pytest.fixture
def tile_server(xyz_tree: XYZTree) -> Iterator[TileServer]:
    """A TileServer on 127.0.0.1 serving ``xyz_tree``; ``server.template()`` is its URL template."""
    with TileServer(xyz_tree.root, hang_timeout=60) as server:
        yield server
