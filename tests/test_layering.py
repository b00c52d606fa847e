"""The package's layers: no module imports a package of a higher layer (nor a sibling of its own).

    0  errors                                       the one exception type
    1  typed, seeds, files, distributed, counting   foundations
    2  models, losses, optim, shards, fixtures,     tools without a view of the data path
       pretext
    3  pipeline                                     spec -> DALI -> photometric stage -> batches
    4  methods, eval                                the method contract; the evaluation protocols
    5  train                                        the loop, checkpoint policy, the run folder
    6  runs                                         evaluation and export of a run
    7  demo                                         the main job on an embedded default
    8  cli                                          the command line

Function-level (lazy) imports count too. `__main__` modules are entry points and may import the CLI.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "sslpipe"
LAYERS = [
    {"errors"},
    {"typed", "seeds", "files", "distributed", "counting"},
    {"models", "losses", "optim", "shards", "fixtures", "pretext"},
    {"pipeline"},
    {"methods", "eval"},
    {"train"},
    {"runs"},
    {"demo"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and p != PACKAGE / "__init__.py")


def unit(path: Path) -> str:
    """The top-level part of sslpipe a file belongs to: `pipeline` for sslpipe/pipeline/ops/blur.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sslpipe" and len(parts) > 1 and parts[1] in LAYER:
                units.add(parts[1])
    return units


def test_every_part_of_the_package_has_a_layer():
    assert {unit(p) for p in MODULES} == set(LAYER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    mine = unit(path)
    for other in imported_units(path) - {mine}:
        assert LAYER[other] < LAYER[mine], (
            f"{path.relative_to(PACKAGE)} ({mine}, layer {LAYER[mine]}) imports "
            f"sslpipe.{other} (layer {LAYER[other]})"
        )
