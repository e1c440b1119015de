"""What a worker's operator allows a job to do: which models, which sources, how much work.

A ``lazytiles worker`` takes jobs from a topic that other people write to, so a job is a request, not
an instruction. :class:`Policy` holds the operator's answer: the models a job may name
(``--allow-model``), the URL prefixes and local directories it may read (``--allow-source``) and the
limits of one job (:class:`Limits`). Each check raises :class:`JobRefused` naming the rule and the
flag that changes it; nothing is opened, imported or fetched before the checks pass.

Sources are matched as follows:

- ``http(s)://`` URLs and tile templates: scheme, host and port equal an allowed URL prefix's, and the
  path starts with the prefix's path. The host is resolved: an address that is private, loopback,
  link-local or otherwise not public is refused unless the prefix names that host by an IP address
  or as ``localhost`` (``--allow-source http://127.0.0.1:8080/``).
- ``/vsi…`` GDAL paths: only under a prefix that starts with the same ``/vsi…/`` handler.
- Local paths and ``file://`` URLs: the part before the first ``{`` is resolved (symlinks, ``..``) and
  must lie inside an allowed directory; ``/dev``, ``/proc`` and ``/sys`` never, nor device files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from ..sources.http import redact
from .messages import JobError

#: lazytiles' own models, allowed on a worker without --allow-model: by name and by spec.
BUILTIN_MODELS: dict[str, str] = {
    key: spec
    for name in ("blob_detector", "window_classifier")
    for spec in [f"lazytiles.detection.models:{name}"]
    for key in (name, spec)
}

#: Directories no job reads, whatever the allow-list says.
NEVER = ("/dev", "/proc", "/sys")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)=(.+)$")


class JobRefused(JobError):
    """A job asks for something its worker's operator did not allow (a model, a source, a limit)."""


@dataclass(frozen=True)
class Limits:
    """How much one job may ask for; each has the worker flag that raises it."""

    max_windows: int = 1_000_000
    max_batch_size: int = 64
    max_job_bytes: int = 1 << 20
    max_window_size: int = 4096
    max_zoom: int = 24

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JobError(f"worker limit {name}={value!r} must be a positive integer")

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def check(self, name: str, value: int, what: str) -> None:
        """Refuse ``value`` above the limit ``name``, naming the flag that raises it."""
        limit = getattr(self, name)
        if value > limit:
            raise JobRefused(
                f"{what} is {value}, over this worker's limit of {limit}; the operator raises it with "
                f"{self.flag(name)} (or send a smaller job)"
            )


@dataclass(frozen=True)
class Policy:
    """The operator's allow-lists and limits. Build it with :meth:`from_flags`."""

    models: Mapping[str, str] = field(default_factory=lambda: dict(BUILTIN_MODELS))
    sources: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_flags(
        cls, allow_model: Iterable[str] = (), allow_source: Iterable[str] = (), limits: Limits | None = None
    ) -> Policy:
        """From ``--allow-model`` (``spec`` or ``NAME=spec``) and ``--allow-source`` values.

        Without ``--allow-model`` only lazytiles' built-in models are allowed; at least one source
        prefix is required.
        """
        models: dict[str, str] = {}
        for text in allow_model:
            named = _NAMED.match(text)
            name, spec = named.groups() if named and ":" not in named.group(1) else (text, text)
            if not spec.strip():
                raise JobError(f"--allow-model {text!r} names no model; give pkg.module:factory, a file or NAME=SPEC")
            models[name] = spec
            models.setdefault(spec, spec)
        sources = tuple(_check_prefix(p) for p in allow_source)
        if not sources:
            raise JobError(
                "a worker needs at least one --allow-source PREFIX (a URL prefix such as "
                "https://tiles.example.com/ or a local directory) naming what its jobs may read"
            )
        return cls(models=models or dict(BUILTIN_MODELS), sources=sources, limits=limits or Limits())

    # -- models ------------------------------------------------------------------------------------

    def model(self, name: str) -> str:
        """The spec to load for a job's ``model``: an allowed spec or the name of one."""
        if name in self.models:
            return self.models[name]
        shown = ", ".join(sorted(k for k, v in self.models.items() if k == v or ":" not in k)[:10])
        raise JobRefused(
            f"model {_short(name)} is not allowed on this worker (allowed: {shown}); the operator allows "
            "models with --allow-model SPEC or --allow-model NAME=SPEC"
        )

    # -- sources -----------------------------------------------------------------------------------

    def source(self, source: str) -> None:
        """Refuse ``source`` unless it lies under an allowed prefix (see the module docstring)."""
        shown = _short(redact(source))
        if not isinstance(source, str) or "\x00" in source:
            raise JobRefused(f"source {shown} is not a path or URL")
        lowered = source.lower()
        if lowered.startswith("/vsi"):
            handler = lowered.split("/", 2)[1]
            ok = any(p.lower().startswith(f"/{handler}/") and _under(source, p) for p in self.sources)
            if not ok or "/../" in source or source.endswith("/.."):
                raise self._refused(shown, f"GDAL /{handler}/ paths are read only under a prefix that names them")
            return
        if lowered.startswith(("http://", "https://")):
            self._url(source, shown)
            return
        if lowered.startswith("file://"):
            source = urlsplit(source).path
        elif _URL.match(source):
            raise self._refused(shown, "only http(s) URLs, file:// URLs, local paths and allowed /vsi paths are read")
        self._path(source, shown)

    def _url(self, source: str, shown: str) -> None:
        parts = urlsplit(source)
        host = (parts.hostname or "").lower()
        for prefix in self.sources:
            pre = urlsplit(prefix)
            if not pre.scheme.startswith("http"):
                continue
            origin = (pre.scheme.lower(), (pre.hostname or "").lower(), _port(pre))
            if (parts.scheme.lower(), host, _port(parts)) != origin:
                continue
            if not parts.path.startswith(pre.path or "/") or "/../" in parts.path:
                continue
            if not _explicit(pre.hostname or ""):
                public = _public(host)
                if public is None:
                    raise self._refused(shown, f"host {host!r} does not resolve here")
                if not public:
                    raise self._refused(shown, f"host {host!r} resolves to a private or local address")
            return
        raise self._refused(shown, "it is under no allowed URL prefix")

    def _path(self, source: str, shown: str) -> None:
        static = source.split("{", 1)[0]
        resolved = os.path.realpath(static)
        if any(resolved == d or resolved.startswith(d + os.sep) for d in NEVER):
            raise self._refused(shown, "device, proc and sys files are never read")
        try:
            mode = os.stat(resolved).st_mode
        except OSError:
            mode = 0
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise self._refused(shown, "it is not a regular file")
        for prefix in self.sources:
            if prefix.lower().startswith(("http://", "https://", "/vsi")):
                continue
            root = os.path.realpath(prefix[7:] if prefix.lower().startswith("file://") else prefix)
            inside = resolved.startswith(root.rstrip(os.sep) + os.sep)
            if inside or (resolved == root and static.endswith(os.sep)):  # a template right in the directory
                return
        raise self._refused(shown, "it is not inside an allowed directory (symlinks and '..' are resolved)")

    @staticmethod
    def _refused(shown: str, why: str) -> JobRefused:
        return JobRefused(
            f"source {shown} is not allowed on this worker: {why}; the operator allows sources with "
            "--allow-source PREFIX"
        )


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        raise JobError(f"--allow-source {prefix!r} is empty; give a URL prefix or a local directory")
    if prefix.lower().startswith(("http://", "https://")) and not urlsplit(prefix).hostname:
        raise JobError(f"--allow-source {redact(prefix)!r} has no host; give e.g. https://tiles.example.com/")
    return prefix


def _under(source: str, prefix: str) -> bool:
    return source.startswith(prefix) and (prefix.endswith("/") or source[len(prefix) : len(prefix) + 1] in ("", "/"))


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        return -1
    return port if port is not None else (443 if parts.scheme.lower() == "https" else 80)


def _explicit(host: str) -> bool:
    """The prefix names the host by address (or as localhost): its operator meant that machine."""
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _public(host: str) -> bool | None:
    """Every address ``host`` resolves to is a public one (no private, loopback, link-local...);
    None when it does not resolve (refused too: it must not start resolving somewhere private later)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_global for info in infos)


def _short(text: object, limit: int = 120) -> str:
    """``text`` for an error message: printable, quoted, at most ``limit`` characters."""
    shown = repr(str(text))
    return shown if len(shown) <= limit else shown[: limit - 4] + "…'"
