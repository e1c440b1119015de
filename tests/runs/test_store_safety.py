"""Run stores that fail safe: damaged stores release their lock, recipes ignore patch versions and
credentials, no secret is stored, and every file is written under an unpredictable temporary name.

Every store here is real (made by ``lt.detect_region``, damaged with ``sqlite3`` or by cutting the file);
the check that no lock is left is a second open, in this process and in another one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import UTM_10M

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.runs import files
from lazytiles.runs.files import temp_beside, write_output
from lazytiles.runs.lifecycle import RunLifecycle
from lazytiles.runs.recipe import DetectOptions
from lazytiles.runs.store import RunStore

REPO = Path(__file__).resolve().parents[2]


def scene() -> np.ndarray:
    image = np.zeros((3, 256, 256), np.uint8)
    for r in range(4):
        for c in range(4):
            image[(r + c) % 3, 64 * r + 10 : 64 * r + 20, 64 * c + 5 : 64 * c + 25] = 255
    return image


class Broken(lt.ArraySource):
    """An ArraySource whose tiles in ``broken`` (row, col) fail with ``message``, which quotes a URL with
    credentials, as a tile server's error would."""

    broken: ClassVar[set[tuple[int, int]]] = set()
    message = "GET https://me:pw1@tiles.example/1/1.png?api_key=SECRET3 failed"

    def _read_tile(self, key):
        if (key.row, key.col) in self.broken:
            raise lt.TileFetchError(self.message)
        return super()._read_tile(key)


@pytest.fixture
def broken():
    """Broken's tile (1, 1), under window 5, fails while the test runs."""
    Broken.broken = {(1, 1)}
    yield Broken
    Broken.broken = set()


def windows(token: str = "safety") -> lt.WindowSequence:
    """16 windows of 64 px over 64-px tiles, a blob in each."""
    src = Broken(scene(), transform=UTM_10M, crs="EPSG:32633", tile_shape=64, token=token, cache=lt.TileCache())
    return lt.windows(src, size=64)


def run(out: Path, wins: lt.WindowSequence | None = None, **options: object) -> lt.Detections:
    return lt.detect_region(BlobDetector(), windows() if wins is None else wins, out=out, progress=False, **options)


def sql(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA secure_delete = ON")  # what the test replaces leaves no trace in the file
        for statement in statements:
            con.execute(statement)
    con.close()


def set_row(path: Path, key: str, value: object) -> None:
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA secure_delete = ON")
        con.execute("UPDATE lazytiles_run SET value = ? WHERE key = ?", (value, key))
    con.close()


def recipe_of(path: Path) -> dict:
    with sqlite3.connect(path) as con:
        (text,) = con.execute("SELECT value FROM lazytiles_run WHERE key = 'recipe'").fetchone()
    con.close()
    return json.loads(text)


def set_recipe(path: Path, **changes: object) -> None:
    set_row(path, "recipe", json.dumps({**recipe_of(path), **changes}, sort_keys=True))


LOCK_CHILD = """
import sys
from pathlib import Path
import lazytiles as lt
from lazytiles.runs.store import RunStore
try:
    RunStore.resume(Path(sys.argv[1])).close()
    print("opened")
except lt.RunLockedError as err:
    print("locked:", err)
except lt.RunStoreError as err:
    print("refused:", err)
"""


def open_elsewhere(path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", LOCK_CHILD, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- a store that cannot be opened keeps no lock --------------------------------------------------------------


DAMAGE = {
    "georef missing": (lambda p: sql(p, "DELETE FROM lazytiles_run WHERE key = 'georef'"), r"'georef' is missing"),
    "schema as a string": (lambda p: set_row(p, "schema", '"1"'), r"'schema' holds str '1' where a int belongs"),
    "schema NULL": (lambda p: set_row(p, "schema", None), r"'schema' holds NoneType None, not JSON text"),
    "recipe a list": (lambda p: set_row(p, "recipe", "[1, 2]"), r"'recipe' holds list \[1, 2\] where a dict belongs"),
    "georef transform": (
        lambda p: set_row(p, "georef", '{"transform": [1, 2], "crs": null, "srs_id": 0}'),
        r"'georef' has transform \[1, 2\], not 6 finite numbers",
    ),
    "crs not WKT": (
        lambda p: set_row(p, "georef", '{"transform": [1, 0, 0, 0, -1, 0], "crs": "?", "srs_id": 0}'),
        r"'georef' has a crs GDAL cannot read",
    ),
    "windows cut short": (lambda p: set_row(p, "windows", "eJwLy"), r"'windows' is not a packed array"),
    "merge not a rule": (lambda p: set_row(p, "merge", '{"iou": 7}'), r"'merge' is not a merge rule .*iou"),
    "table dropped": (lambda p: sql(p, "DROP TABLE lazytiles_windows"), r"its table lazytiles_windows is missing"),
    "column dropped": (
        lambda p: sql(p, "ALTER TABLE lazytiles_sessions DROP COLUMN options"),
        r"its table lazytiles_sessions lacks the column options",
    ),
    "file cut short": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]), r"could not be"),
    "not a GeoPackage": (
        lambda p: p.write_bytes(b"GeoJSON? " * 500),
        r"could not be (opened|read as a lazytiles run store): file is not a database",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_store_that_cannot_be_opened_raises_run_store_error_and_keeps_no_lock(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "run.gpkg"
    expected = run(out)
    spoil, message = DAMAGE[damage]
    spoil(out)
    for _ in range(2):  # the second finds no lock left by the first
        with pytest.raises(lt.RunStoreError, match=message) as info:
            run(out)
        assert type(info.value) is lt.RunStoreError and repr(str(out)) in str(info.value)
        with pytest.raises(lt.RunStoreError, match=message) as info:
            RunStore.resume(out)
        assert type(info.value) is lt.RunStoreError
    with pytest.raises(lt.RunStoreError, match=message):
        lt.open_run(out)
    assert open_elsewhere(out).startswith("refused:")  # not "locked:"
    files.FileLock(out).release()  # free here, too
    found = run(out, force_new=True)
    np.testing.assert_array_equal(found.boxes, expected.boxes)


def test_a_store_opened_for_a_resume_releases_its_lock_when_beginning_a_session_fails(tmp_path: Path) -> None:
    out = tmp_path / "run.gpkg"
    run(out)
    sql(out, "CREATE TRIGGER no_sessions BEFORE INSERT ON lazytiles_sessions BEGIN SELECT RAISE(ABORT, 'no'); END")
    lifecycle = RunLifecycle(windows(), out)
    with pytest.raises(lt.RunStoreError, match=r"cannot write to run store .*run\.gpkg.*no"):
        lifecycle.open(BlobDetector(), {})
    assert open_elsewhere(out) == "opened"


# -- the recipe: what changes results ---------------------------------------------------------------------------


def test_a_store_of_another_patch_version_resumes_and_another_minor_version_does_not(tmp_path: Path, broken) -> None:
    out = tmp_path / "run.gpkg"
    with pytest.warns(lt.FailedWindowsWarning, match="1 of 16 windows"):
        first = run(out)
    broken.broken = set()
    major, minor, _ = lt.__version__.split(".", 2)
    set_recipe(out, **{"lazytiles.version": f"{major}.{minor}.97"})
    found = run(out)  # resumed: window 5 is detected, the 15 done are read back
    assert len(found) == len(first) + 1
    with lt.open_run(out) as r:
        assert r.complete and [s["windows_done"] for s in r.sessions] == [15, 1]
        assert r.recipe["lazytiles.version"] == f"{major}.{minor}.97"
    for other in (f"{major}.{int(minor) + 1}.0", f"{int(major) + 1}.{minor}.0"):
        set_recipe(out, **{"lazytiles.version": other})
        with pytest.raises(lt.RecipeMismatchError, match=rf"lazytiles\.version is \"{other}\" there .*minor or major"):
            run(out)
    set_recipe(out, **{"lazytiles.version": lt.__version__})
    with pytest.raises(lt.RecipeMismatchError, match=r"source is .*safety.* there but .*other.* now"):
        run(out, wins=windows("other"))


# -- no secrets in the store ---------------------------------------------------------------------------------------


def test_credentials_are_masked_in_every_record_and_are_not_part_of_the_recipe(tmp_path: Path, broken) -> None:
    out = tmp_path / "run.gpkg"
    url = "xyz:https://user:SECRET0@tiles.example/{z}/{x}/{y}.png?api_key=SECRET1&style=dark"
    masked = "xyz:https://***@tiles.example/{z}/{x}/{y}.png?api_key=***&style=dark"
    with pytest.warns(lt.FailedWindowsWarning, match=r"1/1\.png\?api_key=\*\*\* failed"):
        run(out, wins=windows(url))
    with lt.open_run(out) as r:
        assert r.recipe["source"] == masked
        assert list(r.failed) == [5] and r.failed[5].endswith(
            "GET https://***@tiles.example/1/1.png?api_key=*** failed"
        )
    broken.broken = set()
    # another key for the same tiles is the same run, also where the store holds the key (older stores)
    set_recipe(out, source=url)
    run(out, wins=windows(url.replace("SECRET1", "SECRET2")))
    lifecycle = RunLifecycle(windows(url.replace("SECRET", "KEY")), out, DetectOptions())
    with pytest.raises(RuntimeError, match="stop"), lifecycle.open(BlobDetector(), {"endpoint": url, "n": [url]}):
        raise RuntimeError(f"stop at {url}")
    set_recipe(out, source=masked)  # what this test planted
    data = out.read_bytes()
    assert b"SECRET" not in data and b"pw1" not in data
    with lt.open_run(out) as r:
        assert r.complete and [s["windows_done"] for s in r.sessions] == [15, 1, 0]
        assert r.sessions[-1]["status"] == f"stopped: RuntimeError: stop at {masked}"
    with sqlite3.connect(out) as con:
        options = json.loads(con.execute("SELECT options FROM lazytiles_sessions ORDER BY session DESC").fetchone()[0])
    con.close()
    assert options == {"endpoint": masked, "n": [masked]}


# -- temporary files -------------------------------------------------------------------------------------------------


def test_outputs_are_written_under_unpredictable_names_never_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    geojson = tmp_path / "found.geojson"
    for name in (f".found.{os.getpid()}.tmp.geojson", f".found.geojson.{os.getpid()}.tmp.geojson"):
        (tmp_path / name).symlink_to(victim)  # where a predictable name would have been
    found = run(tmp_path / "run.gpkg", geojson=geojson)
    assert victim.read_text() == "keep me"
    assert len(json.loads(geojson.read_text())["features"]) == len(found)
    umask = os.umask(0o022)
    os.umask(umask)
    assert geojson.stat().st_mode & 0o777 == 0o666 & ~umask  # as open(path, "w") makes it
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name and not p.is_symlink()) == []
    names = {temp_beside(geojson).name for _ in range(3)}
    assert len(names) == 3 and all(n.startswith(".found.geojson.") and n.endswith(".tmp") for n in names)


def test_a_temporary_name_taken_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * 2 * n)  # every name the same: taken
    (tmp_path / f".out.json.{'0' * 16}.tmp.json").symlink_to(victim)
    with pytest.raises(lt.RunStoreError, match=r"cannot write GeoJSON .*out\.json"):
        write_output(tmp_path / "out.json", lambda p: p.write_text("{}"), "GeoJSON")
    assert victim.read_text() == "keep me" and not (tmp_path / "out.json").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old")

    def half(path: Path) -> None:
        path.write_text("half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(lt.RunStoreError, match=r"cannot write GeoJSON .*out\.json.*No space left on device"):
        write_output(out, half, "GeoJSON")

    def buggy(path: Path) -> None:
        path.write_text("half of it")
        raise KeyError("bug")

    with pytest.raises(KeyError):
        write_output(out, buggy, "GeoJSON")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_output(out, lambda p: p.write_text("new"), "GeoJSON")
    assert out.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
