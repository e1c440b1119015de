"""Outlines in the run store: a mask model's outlines are stored per window and merged, and read back equal."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

import lazytiles as lt


def bright_masks(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One object per window: its bright pixels, with their mask (Mask R-CNN's output)."""
    out = []
    for img in x:
        m = img[0] > 0
        rows, cols = torch.nonzero(m, as_tuple=True)
        if not len(rows):
            out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                        "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, *m.shape)})  # fmt: skip
            continue
        box = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
        out.append({"boxes": box[None], "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
                    "masks": m[None, None].float()})  # fmt: skip
    return out


@pytest.fixture
def wins() -> lt.WindowSequence:
    r, c = np.indices((160, 160))
    scene = ((r - 70) ** 2 + (c - 90) ** 2 <= 45**2).astype(np.uint8) * 255  # no window sees it whole
    return lt.windows(lt.ArraySource(scene[None], token="outlines"), 64, overlap=0.25)


def test_outlines_are_stored_merged_and_read_back(wins, tmp_path):
    found = lt.detect_region(bright_masks, wins, out=tmp_path / "run.gpkg", progress=False)
    per_window = list(lt.detect(bright_masks, wins, progress=False))
    assert found == lt.merge(per_window, windows=wins, progress=False) and len(found) == 1
    assert found.shapes[0].area == np.count_nonzero(wins.source.read(wins.area))
    with lt.open_run(tmp_path / "run.gpkg") as run:
        assert run.detections() == lt.Detections.concat(per_window)  # outlines included, bit for bit
        assert run.result() == found
        assert run.merge(iou=0.3) == lt.merge(per_window, windows=wins, iou=0.3, progress=False)


def test_a_damaged_outline_is_the_stores_error(wins, tmp_path):
    lt.detect_region(bright_masks, wins, out=tmp_path / "run.gpkg", progress=False)
    with sqlite3.connect(tmp_path / "run.gpkg") as con:
        con.execute("UPDATE raw_detections SET outline = x'0102' WHERE rank = 0")
    with lt.open_run(tmp_path / "run.gpkg") as run:
        with pytest.raises(lt.RunStoreError, match="column outline holds a blob that is not WKB"):
            run.detections()
