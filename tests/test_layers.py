"""The apps' imports point one way: scheduling -> workflows -> agents -> runs (bin/imports prints
the graph). None goes against it; should one be unavoidable, it is listed here, by file, with
the reason, so the list can only shrink."""

import importlib.machinery
import importlib.util

from live import ROOT

KNOWN_UPWARD = {}


def load_imports():
    loader = importlib.machinery.SourceFileLoader("relay_imports", str(ROOT / "bin" / "imports"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_the_apps_import_only_downward_but_for_the_known_few():
    imports = load_imports()
    upward = {
        edge: {place.rsplit(":", 1)[0] for place in places}
        for edge, places in imports.upward(imports.graph()).items()
    }
    assert upward == KNOWN_UPWARD


def test_it_sees_imports_inside_functions_too(tmp_path):
    imports = load_imports()
    module = tmp_path / "example.py"
    module.write_text("def f():\n    from workflows.runner import WorkflowLoop\n")
    assert list(imports.imports(module, "agents")) == [("workflows", 2)]
