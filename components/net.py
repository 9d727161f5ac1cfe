"""Reachability probes with the server named in the error, so that nothing hangs on a dead URL."""

from __future__ import annotations

import urllib.error
import urllib.request

from components.errors import MetagenError, ServerUnreachable


def check_health(url: str, what: str, timeout: float = 5.0) -> None:
    """GET ``<url>/health``; a :class:`MetagenError` naming ``what`` and ``url`` if it does not answer 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise MetagenError(f"{what} at {url} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as err:
        raise ServerUnreachable(f"{what} unreachable at {url}: {err}") from None
