"""Which folders and hosts a run may touch, as the machine running it allows.

Anyone who can open the Prefect UI can set `output_dir`, `extra_data` and `source`. On a shared
server a worker therefore takes the allowed places from its own environment, set where it starts:

    CIFAR_PIPELINE_ALLOWED_ROOTS=/srv/cifar/outputs:/srv/cifar/data   folders (os.pathsep-separated)
    CIFAR_PIPELINE_ALLOWED_HOSTS=mirror.lan,www.cs.toronto.edu        hosts of http(s) sources

A run whose output folder, extra-data folder or local source lies outside the roots (after
following links), or whose URL names another host, is refused before any work. An unset variable
means no restriction of that kind (a laptop).
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .config import PipelineConfig
from .errors import ConfigError

ROOTS_ENV = "CIFAR_PIPELINE_ALLOWED_ROOTS"
HOSTS_ENV = "CIFAR_PIPELINE_ALLOWED_HOSTS"


def allowed_roots(environ: Mapping[str, str]) -> list[Path] | None:
    text = environ.get(ROOTS_ENV, "").strip()
    if not text:
        return None
    return [Path(p).expanduser().resolve() for p in text.split(os.pathsep) if p.strip()]


def allowed_hosts(environ: Mapping[str, str]) -> set[str] | None:
    text = environ.get(HOSTS_ENV, "").strip()
    if not text:
        return None
    return {h.strip().lower() for h in text.split(",") if h.strip()}


def _local(source: str) -> Path | None:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(source)
    return None


def check_places(places: list[tuple[str, str]], environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError naming the first (field, path or file:// URL) outside the allowed roots."""
    roots = allowed_roots(os.environ if environ is None else environ)
    if roots is None:
        return
    for field, value in places:
        # resolve() follows links, so a link inside a root that points outside is refused too.
        path = (_local(value) or Path(value)).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in roots):
            shown = os.pathsep.join(map(str, roots))
            raise ConfigError(f"{field} = {value!r} is outside the folders this worker allows ({ROOTS_ENV}={shown})")


def check_access(cfg: PipelineConfig, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError naming the first value outside what `environ` allows; `cfg` is resolved."""
    environ = os.environ if environ is None else environ
    hosts = allowed_hosts(environ)
    places = [("output_dir", cfg.output_dir)] if cfg.output_dir else []
    places += [("extra_data", folder) for folder in cfg.extra_data or []]
    urls = []
    for source in cfg.sources():
        if _local(source) is None:
            urls.append(source)
        else:
            places.append(("source", source))
    check_places(places, environ)
    if hosts is not None:
        for url in urls:
            host = (urllib.parse.urlparse(url).hostname or "").lower()
            if host not in hosts:
                raise ConfigError(f"source = {url!r}: host {host or '(none)'} is not one this worker allows "
                                  f"({HOSTS_ENV}={','.join(sorted(hosts))})")
