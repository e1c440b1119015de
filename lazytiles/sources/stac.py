"""STAC items as one mosaic: :func:`lazytiles.open_stac`.

Items come as a ``pystac`` ItemCollection or list of Items (``pip install lazytiles[stac]``), a list of
item dicts (a FeatureCollection too), or a local file: an item, an item collection, or a catalog or
collection whose ``item`` and ``child`` links are followed. A file is treated as hostile: each is read
up to :data:`MAX_FILE_BYTES`, at most :data:`MAX_ITEMS` items and :data:`MAX_DEPTH` levels of links,
links and relative asset hrefs must stay inside the root file's folder, and an asset href may only be
such a local file or a URL of an allowed scheme (never a GDAL ``/vsi...`` path). Errors name the item
and what to do, quoting no more than a short, escaped piece of the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

from ..cache import TileCache
from ..errors import InvalidArgumentError, SourceNotFoundError
from .raster import RasterSource
from .scenes import MosaicSource
from .templates import read_file

#: Most bytes read of one STAC file.
MAX_FILE_BYTES = 16 * 2**20
#: Most items one call opens.
MAX_ITEMS = 10_000
#: Most levels of catalog links followed below the root file.
MAX_DEPTH = 16
#: URL schemes an asset href may have by default (local files are always allowed, within the rules).
SCHEMES = ("https", "http", "s3", "gs")

Item = dict[str, Any]
#: The folder of the file an item came from and the root file's folder (None: it came from no file).
Base = tuple[str, str] | None


def open_stac(
    items: Any,
    asset: str = "visual",
    *,
    crs: Any = None,
    res: float | tuple[float, float] | None = None,
    order: str | Sequence[float] | Callable[[Item], Any] = "first",
    schemes: Sequence[str] = SCHEMES,
    resampling: str = "nearest",
    tile_shape: int | tuple[int, int] = 512,
    cache: TileCache | None = None,
) -> MosaicSource:
    """One asset of each STAC item, as a mosaic (:func:`lazytiles.mosaic`); its recipe names the items.

    Parameters
    ----------
    items
        A ``pystac.ItemCollection``, a list of ``pystac.Item`` or item dicts, a FeatureCollection dict,
        or the path of a local STAC file (item, item collection, catalog or collection).
    asset
        The key of the asset to read in every item, e.g. ``"visual"`` or ``"B04"``.
    crs, res, resampling, tile_shape, cache
        As in :func:`lazytiles.mosaic`.
    order
        As in :func:`lazytiles.mosaic`, except that a function is given each item's dict, e.g.
        ``order=lambda item: item["properties"]["eo:cloud_cover"]`` puts the least cloudy on top.
    schemes
        URL schemes an asset href may use (local files are always allowed).

    Raises
    ------
    InvalidArgumentError
        Not STAC, too large or deep, an item without ``asset``, an href outside the rules.
    SourceNotFoundError
        The STAC file, or a local asset, does not exist.
    """
    if not isinstance(asset, str) or not asset:
        raise InvalidArgumentError(f"asset must be the key of an asset, e.g. 'visual', got {asset!r}")
    found = _items(items)
    if not found:
        raise InvalidArgumentError("the STAC input holds no item; pass items with assets to mosaic")
    allowed = tuple(s.lower() for s in schemes)
    ids, paths = [], []
    for n, (item, base) in enumerate(found):
        ids.append(_item_id(item, n))
        paths.append(_asset_href(item, ids[-1], asset, base, allowed))
    scenes = [RasterSource(p, cache=cache) for p in paths]
    keys = order if not callable(order) else [order(item) for item, _ in found]
    return MosaicSource(
        scenes, crs=crs, res=res, order=keys, resampling=resampling, tile_shape=tile_shape, cache=cache, labels=ids
    )


# -- gathering items ----------------------------------------------------------------------------------


def _items(items: Any) -> list[tuple[Item, Base]]:
    """Each item as a dict, and where its relative hrefs lead (see :data:`Base`)."""
    if isinstance(items, str | os.PathLike):
        root = os.path.realpath(os.fspath(items))
        found: list[tuple[Item, Base]] = []
        _walk(root, os.path.dirname(root), found, 0, set())
        return found
    if isinstance(items, dict):
        items = items.get("features", [items]) if items.get("type") == "FeatureCollection" else [items]
    elif hasattr(items, "items") and not isinstance(items, Sequence):  # a pystac ItemCollection
        items = list(items.items)
    if not isinstance(items, Iterable):
        raise InvalidArgumentError(
            f"items must be a pystac ItemCollection, a list of items or a STAC file path, got {type(items).__name__}"
        )
    out: list[tuple[Item, Base]] = []
    for item in items:
        if len(out) >= MAX_ITEMS:
            raise InvalidArgumentError(f"more than {MAX_ITEMS} STAC items; mosaic fewer at a time")
        out.append((_from_pystac(item) if hasattr(item, "to_dict") else item, None))
    return out


def _from_pystac(item: Any) -> Item:
    """A pystac Item as a dict whose asset hrefs are absolute where pystac knows where it lies."""
    described: Item = item.to_dict(include_self_link=False)
    for key, value in getattr(item, "assets", {}).items():
        href = value.get_absolute_href()
        if href is not None and key in described.get("assets", {}):
            described["assets"][key]["href"] = href
    return described


def _load(path: str) -> Any:
    try:
        body = read_file(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise SourceNotFoundError(f"no such STAC file: {path!r}; check the path") from None
    except OSError as err:
        raise InvalidArgumentError(
            f"STAC file {path!r} could not be read ({err.strerror}); it must be a regular JSON file "
            f"of at most {MAX_FILE_BYTES} bytes"
        ) from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InvalidArgumentError(
            f"STAC file {path!r} is not valid JSON{where}; pass a STAC item, item collection or catalog"
        ) from None


def _walk(path: str, root: str, found: list[tuple[Item, Base]], depth: int, seen: set[str]) -> None:
    if path in seen:
        return
    seen.add(path)
    doc = _load(path)
    kind = doc.get("type") if isinstance(doc, dict) else None
    here = os.path.dirname(path)
    if kind == "Feature":
        docs = [doc]
    elif kind == "FeatureCollection":
        docs = doc.get("features")
        if not isinstance(docs, list):
            raise InvalidArgumentError(f"STAC item collection {path!r} has no list of 'features'")
    elif kind in ("Catalog", "Collection"):
        if depth >= MAX_DEPTH:
            raise InvalidArgumentError(f"STAC catalog {path!r} is linked more than {MAX_DEPTH} levels deep")
        links = doc.get("links")
        for link in links if isinstance(links, list) else []:
            if isinstance(link, dict) and link.get("rel") in ("item", "child"):
                target = _local(link.get("href"), here, root, f"a link of {path!r}")
                _walk(target, root, found, depth + 1, seen)
        return
    else:
        raise InvalidArgumentError(
            f"{path!r} is not a STAC item, item collection or catalog (its 'type' is {_short(kind)})"
        )
    for item in docs:
        if len(found) >= MAX_ITEMS:
            raise InvalidArgumentError(f"{path!r}: more than {MAX_ITEMS} STAC items; mosaic fewer at a time")
        found.append((item, (here, root)))


# -- one item -----------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _item_id(item: Any, n: int) -> str:
    if not isinstance(item, dict) or item.get("type", "Feature") != "Feature":
        raise InvalidArgumentError(f"STAC item {n} is not an item (a GeoJSON Feature with 'assets')")
    ident = item.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > 256 or not ident.isprintable():
        raise InvalidArgumentError(f"STAC item {n} has no usable 'id' (a short printable string), got {_short(ident)}")
    return ident


def _asset_href(item: Item, ident: str, asset: str, base: Base, schemes: tuple[str, ...]) -> str:
    assets = item.get("assets")
    entry = assets.get(asset) if isinstance(assets, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("href"), str):
        keys = sorted(k for k in assets if isinstance(k, str))[:12] if isinstance(assets, dict) else []
        raise InvalidArgumentError(
            f"STAC item {_short(ident)} has no asset {asset!r} with an href; its assets are "
            f"{_short(keys, 300)}: pass one of them as asset="
        )
    href: str = entry["href"]
    what = f"asset {asset!r} of STAC item {_short(ident)}"
    scheme = urlparse(href).scheme.lower()
    if len(scheme) > 1 and scheme != "file":  # a URL (one letter: a Windows drive)
        if scheme not in schemes:
            raise InvalidArgumentError(
                f"{what} is a {scheme!r} URL; allowed are {', '.join(schemes)} and local files "
                "(pass schemes=... to allow more)"
            )
        return href
    if base is None:
        path = unquote(urlparse(href).path) if scheme == "file" else href
        if not os.path.isabs(path):
            raise InvalidArgumentError(
                f"{what} has the relative href {_short(href)} and no file it is relative to; give absolute "
                "hrefs, or pass the STAC file's path to lt.open_stac"
            )
        return _no_vsi(path, what)
    return _local(href, base[0], base[1], what)


def _local(href: Any, here: str, root: str, what: str) -> str:
    """A local href of a file under ``here``, resolved; it must lie inside ``root``."""
    if not isinstance(href, str) or not href:
        raise InvalidArgumentError(f"{what} has no href")
    parsed = urlparse(href)
    if parsed.scheme.lower() not in ("", "file") and len(parsed.scheme) > 1:
        raise InvalidArgumentError(f"{what} points to a {parsed.scheme!r} URL; a STAC file's links must be local files")
    path = unquote(parsed.path) if parsed.scheme.lower() == "file" else href
    _no_vsi(path, what)
    full = os.path.realpath(os.path.join(here, path))
    if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
        raise InvalidArgumentError(
            f"{what} points outside the STAC file's folder ({_short(href)}); keep the files of a catalog "
            "under its folder"
        )
    return full


def _no_vsi(path: str, what: str) -> str:
    if path.lstrip("/").lower().startswith("vsi"):
        raise InvalidArgumentError(f"{what} is a GDAL virtual path ({_short(path)}); give a file or an allowed URL")
    return path


__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_ITEMS", "SCHEMES", "open_stac"]
