"""The dashboard at ``/dashboard``: server-rendered pages (:mod:`.pages`), inline SVG charts
(:mod:`.charts`), one CSS file and one small script under ``/dashboard/static``. No front-end
library, nothing fetched from elsewhere at run time.

Example::

    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> install_dashboard(app)
    >>> (app.url_path_for("version_page", name="ctr", version=2),
    ...  app.url_path_for("dashboard-static", path="dashboard.css"))
    ('/dashboard/feature-sets/ctr/versions/2', '/dashboard/static/dashboard.css')
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.selector_api.dashboard.pages import HERE, router


def install_dashboard(app: FastAPI) -> None:
    """Add the pages and their static files to ``app``."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
