"""``pip-audit`` against PyPI's advisory data, where only PyPI is reachable.

pip-audit's default service (OSV, api.osv.dev) cannot be reached from the build
machines, and its ``pypi`` service asks ``/pypi/<name>/<version>/json``, which the
registry mirror here answers with 404 (so every dependency would be skipped and the
audit would prove nothing). PyPI's project document ``/pypi/<name>/json`` is reachable
and lists the advisories (from PyPI's own advisory database, fed by OSV) that affect
the project's latest release. This wrapper runs pip-audit unchanged except for that
one request: a pin equal to the latest release is audited from the project document;
any other pin falls back to pip-audit's own per-version request (and is reported as
skipped if that fails). Run with pip-audit's usual arguments, e.g.

    python scripts/pip_audit_pypi.py -r requirements/lock.txt --disable-pip --no-deps
"""

from __future__ import annotations

import sys
from typing import Any

import requests
from pip_audit import _cli
from pip_audit._service import pypi


class ProjectDocument(requests.Session):
    """A session that turns a per-version request into the project document when the
    version asked for is the latest release (the document then describes it exactly)."""

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        text = url.decode() if isinstance(url, bytes) else url
        prefix = "https://pypi.org/pypi/"
        parts = text[len(prefix):].rstrip("/").split("/") if text.startswith(prefix) else []
        if len(parts) == 3 and parts[2] == "json":
            name, version = parts[0], parts[1]
            project = super().get(f"{prefix}{name}/json", **kwargs)
            if project.ok and project.json()["info"]["version"] == version:
                return project
        return super().get(url, **kwargs)


_original_init = pypi.PyPIService.__init__


def _init(self: pypi.PyPIService, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    session = ProjectDocument()
    session.headers.update(self.session.headers)
    session.mount("https://", self.session.get_adapter("https://"))
    self.session = session


def main() -> None:
    pypi.PyPIService.__init__ = _init  # type: ignore[method-assign]
    if "--vulnerability-service" not in sys.argv and "-s" not in sys.argv:
        sys.argv[1:1] = ["--vulnerability-service", "pypi"]
    _cli.audit()


if __name__ == "__main__":
    main()
