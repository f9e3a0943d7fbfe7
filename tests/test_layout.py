"""The architecture's rules, checked by importing, not by reading strings.

- The library (``skinnet``) stands alone: no module of it, imported on its own in a fresh
  interpreter, loads training/, benchmarks/, the tests, the test kit or ``app.py``; outside
  ``skinnet.ui`` none loads gradio either, and ``import skinnet`` (with its data and transforms)
  stays light.
- Training sits on the library and never loads the UI; the test kit serves tests and benchmarks.
- Nothing holds the layers together by editing ``sys.path``: every package is installed
  (``pip install -e .``, pyproject.toml).
- requirements.txt (what a Hugging Face Space installs) is pyproject's base + app list.
"""
import ast
import json
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import skinnet
import training

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_THE_LIBRARY = ("training", "benchmarks", "tests", "skinnet_testkit", "app", "conftest", "app_helpers")
UI_ONLY = ("gradio", "gradio_client", "starlette", "fastapi", "uvicorn")


def modules(package) -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))


def loaded_after_importing(names: list[str], preload: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """For each module: the top-level packages in sys.modules after importing it alone. One fresh
    interpreter, started outside the checkout (only installed packages can be found), imports the
    heavy third-party packages none of the rules is about (torch, numpy, PIL, and ``preload``) and
    then forks a child per module, so each import starts from that same clean state."""
    code = """
import contextlib, importlib, io, json, os, sys
import numpy, PIL.Image, torch
for name in os.environ.get("PRELOAD", "").split():
    importlib.import_module(name)
baseline = set(sys.modules)
for name in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        sys.argv = [name, "--help"]  # a package's __main__ runs its command line when imported
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                importlib.import_module(name)
            result = {"loaded": sorted({m.split('.')[0] for m in sys.modules})}
        except SystemExit:
            result = {"loaded": sorted({m.split('.')[0] for m in sys.modules})}
        except BaseException as error:
            result = {"error": repr(error)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.wait()
    print(json.dumps({"name": name, **json.loads(text)}))
"""
    out = subprocess.run([sys.executable, "-c", code, *names], cwd="/", capture_output=True, text=True,
                         env={**os.environ, "PRELOAD": " ".join(preload)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = {}
    for line in out.stdout.splitlines():
        if line.startswith('{"name"'):
            row = json.loads(line)
            assert "error" not in row, f"import {row['name']} failed: {row.get('error')}"
            result[row["name"]] = row["loaded"]
    assert set(result) == set(names)
    return result


LIBRARY = modules(skinnet)


def test_the_walk_finds_every_library_module():
    files = {p.relative_to(ROOT).with_suffix("") for p in (ROOT / "skinnet").rglob("*.py")}
    names = {".".join(f.parts[:-1] if f.name == "__init__" else f.parts) for f in files}
    assert names == set(LIBRARY) | {"skinnet"}


def is_ui(name: str) -> bool:
    return name == "skinnet.ui" or name.startswith("skinnet.ui.")


@pytest.fixture(scope="module")
def library_imports():
    """Third-party packages no rule is about are loaded once before the children fork, and the
    UI's modules start with gradio loaded (they may load it): loading them again per module took
    two minutes."""
    heavy = ("pandas", "timm", "cv2", "matplotlib.pyplot", "pytorch_grad_cam", "safetensors.torch")  # no rule on them
    return {**loaded_after_importing(["skinnet", *(m for m in LIBRARY if not is_ui(m))], preload=heavy),
            **loaded_after_importing([m for m in LIBRARY if is_ui(m)], preload=(*heavy, "gradio"))}


def test_no_library_module_loads_training_benchmarks_tests_or_the_app(library_imports):
    for name, loaded in library_imports.items():
        assert not set(loaded) & set(NOT_IN_THE_LIBRARY), (name, sorted(set(loaded) & set(NOT_IN_THE_LIBRARY)))


def test_only_the_ui_loads_gradio(library_imports):
    for name, loaded in library_imports.items():
        if is_ui(name):
            continue
        assert not set(loaded) & set(UI_ONLY), (name, sorted(set(loaded) & set(UI_ONLY)))


def test_import_skinnet_loads_neither_gradio_nor_training_nor_grad_cam():
    loaded = loaded_after_importing(["skinnet.transforms"])["skinnet.transforms"]  # imports skinnet, skinnet.data
    assert {"skinnet", "torch"} <= set(loaded)
    assert not set(loaded) & {"gradio", "training", "pytorch_grad_cam"}


def test_training_never_loads_the_ui_the_tests_or_benchmarks():
    heavy = ("pandas", "timm", "cv2", "matplotlib.pyplot", "sklearn", "scipy")  # no rule is about them
    for name, loaded in loaded_after_importing(modules(training), preload=heavy).items():
        assert not set(loaded) & {"gradio", "benchmarks", "tests", "skinnet_testkit", "app"}, name


def test_the_layout_test_itself_fails_when_the_library_imports_training(tmp_path):
    """The check above sees an import hidden inside the library (here: a module added to a copy)."""
    package = tmp_path / "skinnet_copy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "leaky.py").write_text("import training.metrics\n")
    code = "import sys, skinnet_copy.leaky; print('training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: a call of one of its methods, an assignment (also to a slice or
    with +=), a ``del``, or ``site.addsitedir``."""
    def is_sys_path(node) -> bool:
        while isinstance(node, ast.Subscript):
            node = node.value
        return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                and node.value.id == "sys")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if is_sys_path(node.func.value) or (node.func.attr == "addsitedir"):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(is_sys_path(t) for t in targets):
                lines.append(node.lineno)
    return lines


def python_files() -> list[Path]:
    skip = {".venv", ".git", "runs", ".device", "node_modules"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_python_file_edits_sys_path():
    files = python_files()
    assert len(files) > 50
    found = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        # also scripts kept in strings and run in a subprocess (e.g. tests' writer processes)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "sys.path" in node.value:
                try:
                    lines = sys_path_edits(ast.parse(node.value))
                except SyntaxError:
                    continue
                if lines and path != Path(__file__).resolve():  # not this file's examples of edits
                    found.setdefault(str(path.relative_to(ROOT)), []).append(f"string at line {node.lineno}")
        if lines := sys_path_edits(tree):
            found.setdefault(str(path.relative_to(ROOT)), []).extend(lines)
    assert found == {}


def test_the_sys_path_check_sees_each_kind_of_edit():
    for code in ("import sys\nsys.path.insert(0, 'x')", "import sys\nsys.path.append('x')",
                 "import sys\nsys.path[:0] = ['x']", "import sys\nsys.path = ['x']", "import sys\nsys.path += ['x']",
                 "import site\nsite.addsitedir('x')"):
        assert sys_path_edits(ast.parse(code)) == [2], code
    assert sys_path_edits(ast.parse("import sys\nprint(sys.path)")) == []


def test_tests_and_benchmarks_import_neither_each_other_nor_the_app_module():
    """Imports resolved from the syntax tree: benchmarks/ never imports a module of tests/, tests never
    import a module of benchmarks/, and only the entry point's own test imports app.py."""
    tests = {p.stem for p in (ROOT / "tests").glob("*.py")}
    benchmarks = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    for folder, forbidden in (("benchmarks", tests | {"app", "tests"}), ("tests", benchmarks | {"benchmarks"}),
                              ("skinnet_testkit", tests | benchmarks | {"app", "tests", "benchmarks"}),
                              ("docs", tests | benchmarks | {"app", "tests", "benchmarks"})):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in {"skinnet", "training", "skinnet_testkit"} or top in sys.stdlib_module_names:
                        continue
                    own = {p.stem for p in path.parent.glob("*.py")}  # a sibling module of a script's folder
                    if top in own and top not in {"app"}:
                        continue
                    assert top not in forbidden, f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"


def test_requirements_txt_is_pyproject_base_and_app():
    """What a Space installs (requirements.txt) is exactly the package's base + app extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {r.split("==")[0].lower().replace("_", "-"): r for r in
                [*project["dependencies"], *project["optional-dependencies"]["app"]]}
    listed = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            listed[line.split("==")[0].lower().replace("_", "-")] = line
    assert {k: v.lower().replace("_", "-") for k, v in listed.items()} == \
        {k: v.lower().replace("_", "-") for k, v in declared.items()}
    assert not any(name.startswith("efficientnet") for name in listed)  # training's ImageNet weights stay out
