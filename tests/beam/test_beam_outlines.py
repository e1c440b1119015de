"""MergeDetections on Beam carries outlines: the DirectRunner's result equals lt.merge's, outlines included."""

from __future__ import annotations

import pytest

import lazytiles as lt

beam = pytest.importorskip("apache_beam")
lb = pytest.importorskip("lazytiles.beam")

from merging.test_outlines import ComponentMasks, discs_scene  # noqa: E402  (after the skip)

from lazytiles.merging.cells import merged_detections, merged_records  # noqa: E402
from lazytiles.merging.chunks import Chunk  # noqa: E402

from .test_beam import Dump, load  # noqa: E402


def test_beam_merges_outlines_like_the_local_merge(tmp_path):
    wins = lt.windows(lt.ArraySource(discs_scene(seed=3)[None]), 64, overlap=0.25)
    per_window = list(lt.detect(ComponentMasks(), wins, progress=False))
    merged = lt.merge(per_window, windows=wins, progress=False)
    rects = wins.pixel_windows().tolist()
    items = [lb.WindowDetections(k, int(d.window_index[0]) if len(d) else k, tuple(rects[k]), d)
             for k, d in enumerate(per_window)]  # fmt: skip
    with beam.Pipeline(options=lb.to_pipeline_options(["--runner=DirectRunner"])) as p:
        _ = (
            p
            | beam.Create(items)
            | lb.MergeDetections(wins, cell_size=40, fanin=2)
            | beam.ParDo(Dump(tmp_path / "merged"))
        )
    d = lt.Detections.concat(load(tmp_path / "merged"))  # in lt.merge's order, as WriteDetections sorts it:
    chunk = Chunk.with_shapes(merged_records(d.boxes, d.scores, d.labels, d.window_index, d.partial), d.shapes)
    assert merged_detections([chunk], d.transform, d.crs) == merged
    assert len(merged) > 10 and all(s is not None for s in merged.shapes)
