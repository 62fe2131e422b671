"""The README's code is true of the package: every name its Python blocks
import exists."""
import ast
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def imported_names():
    for block in BLOCKS:
        for line in block.splitlines():
            if line.startswith(("from harness", "import harness")):
                node = ast.parse(line.split("#")[0]).body[0]
                if isinstance(node, ast.ImportFrom):
                    yield from ((node.module, alias.name) for alias in node.names)
                else:
                    yield from ((alias.name, None) for alias in node.names)


def test_the_readme_has_python_blocks_that_import_the_harness():
    assert BLOCKS and list(imported_names())


@pytest.mark.parametrize("module,name", sorted(set(imported_names()), key=str))
def test_every_name_the_readme_imports_exists(module, name):
    found = importlib.import_module(module)
    if name is not None:
        assert hasattr(found, name) or importlib.util.find_spec(f"{module}.{name}"), f"{module} has no {name}"
