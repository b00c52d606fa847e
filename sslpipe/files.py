"""Where the files that ship with sslpipe are: the pipeline specs and the recipes.

The repository keeps them in its top-level `pipelines/` and `recipes/` folders (the design's
layout); a wheel carries the same files as `sslpipe/pipelines/` and `sslpipe/recipes/`
(`pyproject.toml` maps the folders into the package). A checkout and an editable install read
the repository's folders.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """`pipelines` or `recipes`: the folder of shipped YAML files."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


def shipped_recipe(name: str) -> Path:
    """The path of the shipped recipe `name` (`simclr_small`); it may not exist."""
    return shipped_folder("recipes") / f"{name}.yaml"
