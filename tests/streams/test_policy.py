"""A worker's allow-lists and limits, checked before anything is opened (no broker needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lazytiles.streams.messages import JobError
from lazytiles.streams.policy import BUILTIN_MODELS, JobRefused, Limits, Policy


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    root = tmp_path / "tiles"
    (root / "0" / "0").mkdir(parents=True)
    (root / "0" / "0" / "0.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("AWS_SECRET=AKIAEXAMPLE")
    return root


def policy(*sources: str, models: tuple[str, ...] = ()) -> Policy:
    return Policy.from_flags(models, sources)


def test_a_worker_needs_a_source_allow_list() -> None:
    with pytest.raises(JobError, match="at least one --allow-source"):
        Policy.from_flags([], [])


def test_without_allow_model_only_built_in_models_run() -> None:
    p = policy("/data")
    assert p.model("blob_detector") == "lazytiles.detection.models:blob_detector"
    assert p.model("lazytiles.detection.models:window_classifier") == BUILTIN_MODELS["window_classifier"]
    for hostile in ("sys:exit", "os:abort", "signal:pause", "http.server:test", "/models/evil.pt2", "builtins:eval"):
        with pytest.raises(JobRefused, match=r"not allowed on this worker .*--allow-model"):
            p.model(hostile)


def test_allowed_models_by_spec_and_by_name() -> None:
    p = policy("/data", models=("mypkg.models:detector", "fast=mypkg.models:fast_detector", "/srv/m.pt"))
    assert p.model("mypkg.models:detector") == "mypkg.models:detector"
    assert p.model("fast") == "mypkg.models:fast_detector"
    assert p.model("mypkg.models:fast_detector") == "mypkg.models:fast_detector"
    assert p.model("/srv/m.pt") == "/srv/m.pt"
    with pytest.raises(JobRefused):
        p.model("blob_detector")  # an explicit list replaces the built-in default
    with pytest.raises(JobRefused):
        p.model("mypkg.models:other")


def test_url_prefixes_match_scheme_host_port_and_path() -> None:
    p = policy("http://127.0.0.1:8080/tiles/")
    p.source("http://127.0.0.1:8080/tiles/{z}/{x}/{y}.png")
    for outside in (
        "http://127.0.0.1:8081/tiles/{z}/{x}/{y}.png",  # another port
        "https://127.0.0.1:8080/tiles/{z}/{x}/{y}.png",  # another scheme
        "http://127.0.0.1:8080/other/{z}/{x}/{y}.png",  # another path
        "http://127.0.0.1:8080/tiles/../admin/{z}",  # out through ..
        "http://127.0.0.2:8080/tiles/{z}/{x}/{y}.png",  # another host
        "ftp://127.0.0.1/tiles/{z}",
        "/vsicurl/http://127.0.0.1:8080/tiles/a.tif",  # GDAL handlers only when a prefix names them
        "/vsis3/bucket/a.tif",
        "/vsistdin/",
    ):
        with pytest.raises(JobRefused, match="not allowed on this worker"):
            p.source(outside)


def test_hosts_resolving_to_private_addresses_need_an_explicit_prefix() -> None:
    host = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        pytest.skip("this machine's own name does not resolve")
    import ipaddress

    if all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        pytest.skip("this machine's name resolves to a public address")
    with pytest.raises(JobRefused, match="private or local address"):
        policy(f"http://{host}:9/").source(f"http://{host}:9/{{z}}/{{x}}/{{y}}.png")
    with pytest.raises(JobRefused, match="private or local address|does not resolve"):
        policy("http://localhost.:9/").source("http://localhost.:9/a/{z}/{x}/{y}.png")
    with pytest.raises(JobRefused, match="does not resolve"):
        policy("https://no-such-host.invalid/").source("https://no-such-host.invalid/{z}/{x}/{y}.png")
    policy("http://localhost:9/").source("http://localhost:9/a/{z}/{x}/{y}.png")  # named: the operator meant it
    policy("http://[::1]:9/").source("http://[::1]:9/a/{z}/{x}/{y}.png")


def test_vsi_paths_only_under_a_prefix_that_names_them() -> None:
    p = policy("/vsis3/imagery/")
    p.source("/vsis3/imagery/scene.tif")
    for outside in ("/vsis3/other/scene.tif", "/vsis3/imagery/../other/x.tif", "/vsicurl/https://x/a.tif"):
        with pytest.raises(JobRefused):
            p.source(outside)


def test_local_paths_are_resolved_and_stay_inside(tiles: Path, tmp_path: Path) -> None:
    p = policy(str(tiles))
    p.source(str(tiles / "{z}" / "{x}" / "{y}.png"))
    p.source(f"file://{tiles}/{{z}}/{{x}}/{{y}}.png")
    p.source(str(tiles / "0" / "0" / "0.png"))
    (tiles / "link").symlink_to(tmp_path)  # a symlink out of the directory
    for outside in (
        str(tmp_path / "secret.txt{q}"),  # {q} is empty at zoom 0: one exact file
        f"{tiles}/../secret.txt{{q}}",
        str(tiles / "link" / "secret.txt"),
        f"file://{tmp_path}/secret.txt{{q}}",
        f"{tiles}{{q}}",  # the directory itself, read as a file
        "relative/{z}/{x}/{y}.png",
    ):
        with pytest.raises(JobRefused, match="not inside an allowed directory"):
            p.source(outside)


def test_device_proc_and_sys_files_never(tmp_path: Path) -> None:
    p = policy("/")
    for never in ("/dev/zero{q}", "file:///proc/self/environ{q}", "/sys/kernel/x", "/proc/1/mem"):
        with pytest.raises(JobRefused, match="never read"):
            p.source(never)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(JobRefused, match="not a regular file"):
        p.source(str(fifo))


def test_refusals_never_echo_secrets() -> None:
    p = policy("https://tiles.example.com/")
    with pytest.raises(JobRefused) as info:
        p.source("https://user:hunter2@evil.example/{z}/{x}/{y}.png?api_key=SECRET123&token=T0K")
    text = str(info.value)
    assert "hunter2" not in text and "SECRET123" not in text and "T0K" not in text
    assert "***" in text


def test_limits_name_the_flag_that_raises_them() -> None:
    limits = Limits()
    assert (limits.max_windows, limits.max_batch_size, limits.max_job_bytes) == (1_000_000, 64, 1 << 20)
    with pytest.raises(JobRefused, match=r"over this worker's limit of 64; .*--max-batch-size"):
        limits.check("max_batch_size", 10**9, "batch_size")
    limits.check("max_windows", 1_000_000, "the number of windows")
    with pytest.raises(JobError, match="max_windows=0 must be a positive integer"):
        Limits(max_windows=0)
