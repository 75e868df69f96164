"""ctnode's version, read once from the installed package's metadata (``pyproject.toml``'s
``[project] version``), so there is one number to change. It lives in the lowest layer
because every layer that names the software needs it: the SR's and the secondary
captures' software version (``reporting``), the model card (``training``), ``/health`` and
``ctnode --version`` (``node``, ``cli``).
"""

from importlib import metadata


def _installed_version() -> str:
    try:
        return metadata.version("ctnode")
    except metadata.PackageNotFoundError:  # a checkout run without ever being installed
        return "0+unknown"


__version__ = _installed_version()
