"""lt.open_stac: STAC items (pystac objects, dicts, local catalog files) as one mosaic; hostile files refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.sources import stac

T = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 5_000_000.0)


def write(path, value, col_off=0, size=64):
    profile = dict(driver="GTiff", height=size, width=size, count=1, dtype="uint8", crs="EPSG:32631", nodata=0)
    with rasterio.open(path, "w", transform=T @ Affine.translation(col_off, 0), **profile) as ds:
        ds.write(np.full((1, size, size), value, np.uint8))
    return path


def item(ident, href, cloud):
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": ident,
        "geometry": geometry,
        "bbox": [0, 0, 1, 1],
        "properties": {"datetime": "2024-05-01T00:00:00Z", "eo:cloud_cover": cloud},
        "links": [],
        "assets": {"visual": {"href": href, "type": "image/tiff"}},
    }


@pytest.fixture
def catalog(tmp_path):
    """A catalog file with a child collection of two items whose assets are relative hrefs."""
    (tmp_path / "scenes").mkdir()
    write(tmp_path / "scenes" / "a.tif", 10)
    write(tmp_path / "scenes" / "b.tif", 20, col_off=32)
    items = [item("scene-a", "./a.tif", 30.0), item("scene-b", "./b.tif", 5.0)]
    for it in items:
        (tmp_path / "scenes" / f"{it['id']}.json").write_text(json.dumps(it))
    child = {
        "type": "Collection",
        "id": "c",
        "links": [{"rel": "item", "href": f"./{it['id']}.json"} for it in items],
    }
    (tmp_path / "scenes" / "collection.json").write_text(json.dumps(child))
    root = {"type": "Catalog", "id": "root", "links": [{"rel": "child", "href": "scenes/collection.json"}]}
    (tmp_path / "catalog.json").write_text(json.dumps(root))
    return tmp_path, items


def test_a_catalog_file_becomes_a_mosaic_whose_recipe_names_its_items(catalog):
    folder, _ = catalog
    scenes = lt.open_stac(str(folder / "catalog.json"))
    assert scenes.labels == ["scene-a", "scene-b"] and "scene-a,scene-b" in scenes.token
    assert (scenes.width, scenes.height) == (96, 64)
    row = scenes.read(Window(0, 0, 96, 1))[0, 0]
    assert (row[:64] == 10).all() and (row[64:] == 20).all()  # a (first) on top where they overlap
    cloudless = lt.open_stac(str(folder / "catalog.json"), order=lambda it: it["properties"]["eo:cloud_cover"])
    assert (cloudless.read(Window(32, 0, 64, 1)) == 20).all() and cloudless.labels == ["scene-a", "scene-b"]
    assert pickle.loads(pickle.dumps(cloudless)).token == cloudless.token != scenes.token


def test_item_dicts_a_feature_collection_and_pystac_objects(catalog, tmp_path):
    folder, items = catalog
    absolute = [dict(it, assets={"visual": {"href": str(folder / "scenes" / f"{it['id'][-1]}.tif")}}) for it in items]
    from_dicts = lt.open_stac(absolute)
    from_collection = lt.open_stac({"type": "FeatureCollection", "features": absolute})
    collection = pystac.ItemCollection([pystac.Item.from_dict(it) for it in absolute])
    from_pystac = lt.open_stac(collection)
    assert from_dicts.token == from_collection.token == from_pystac.token
    (tmp_path / "items.json").write_text(json.dumps(collection.to_dict()))
    assert lt.open_stac(str(tmp_path / "items.json")).labels == ["scene-a", "scene-b"]
    read = pystac.read_file(str(folder / "scenes" / "scene-b.json"))  # relative href made absolute by pystac
    assert lt.open_stac([read]).labels == ["scene-b"]


def test_windows_of_a_stac_mosaic_skip_what_no_item_covers(catalog):
    folder, items = catalog
    far = dict(items[1], id="far", assets={"visual": {"href": "./far.tif"}})
    write(folder / "scenes" / "far.tif", 30, col_off=256)
    (folder / "scenes" / "far.json").write_text(json.dumps(far))
    (folder / "scenes" / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "id": "c",
                "links": [{"rel": "item", "href": "./scene-a.json"}, {"rel": "item", "href": "far.json"}],
            }
        )
    )
    scenes = lt.open_stac(str(folder / "catalog.json"))
    assert scenes.width == 320
    wins = lt.windows(scenes, size=64, skip_empty=True)
    assert [int(c) for c, *_ in wins.pixel_windows()] == [0, 256]  # the three windows between are empty
    assert len(lt.windows(scenes, size=64)) == 5


@pytest.mark.parametrize(
    "href, message",
    [
        ("../../outside.tif", "outside the STAC file's folder"),
        ("/etc/passwd", "outside the STAC file's folder"),
        ("file:///etc/passwd", "outside the STAC file's folder"),
        ("/vsicurl/https://example.com/x.tif", "GDAL virtual path"),
        ("ftp://example.com/x.tif", "'ftp' URL; allowed are https, http, s3, gs"),
    ],
)
def test_hostile_hrefs_are_refused(tmp_path, href, message):
    (tmp_path / "item.json").write_text(json.dumps(item("x", href, 0)))
    with pytest.raises(lt.InvalidArgumentError, match=message):
        lt.open_stac(str(tmp_path / "item.json"))


def test_hostile_files_are_refused_with_what_to_do(tmp_path, monkeypatch, catalog):
    folder, items = catalog
    bad = tmp_path / "bad.json"
    bad.write_text("{not json" + "\x1b[31m" * 10)
    with pytest.raises(lt.InvalidArgumentError, match="is not valid JSON at line 1") as err:
        lt.open_stac(str(bad))
    assert "\x1b" not in str(err.value)  # nothing of the file echoed
    monkeypatch.setattr(stac, "MAX_FILE_BYTES", 100)
    with pytest.raises(lt.InvalidArgumentError, match="at most 100 bytes"):
        lt.open_stac(str(folder / "catalog.json"))
    monkeypatch.undo()
    loop = {"type": "Catalog", "id": "l", "links": [{"rel": "child", "href": "./loop.json"}]}
    (tmp_path / "loop.json").write_text(json.dumps(loop))
    with pytest.raises(lt.InvalidArgumentError, match="holds no item"):
        lt.open_stac(str(tmp_path / "loop.json"))  # a cycle is followed once
    link_out = {"type": "Catalog", "id": "o", "links": [{"rel": "child", "href": "https://example.com/c.json"}]}
    (tmp_path / "out.json").write_text(json.dumps(link_out))
    with pytest.raises(lt.InvalidArgumentError, match="links must be local files"):
        lt.open_stac(str(tmp_path / "out.json"))
    with pytest.raises(lt.InvalidArgumentError, match=r"no asset 'B04' .* \['visual'\]: pass one of them"):
        lt.open_stac(str(folder / "catalog.json"), asset="B04")
    with pytest.raises(lt.InvalidArgumentError, match="relative href './a.tif' and no file"):
        lt.open_stac(items)
    with pytest.raises(lt.SourceNotFoundError, match="no such STAC file"):
        lt.open_stac(str(tmp_path / "missing.json"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(lt.InvalidArgumentError, match="regular JSON file"):
            lt.open_stac(str(tmp_path / "fifo.json"))
