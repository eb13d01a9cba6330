"""deploy/Dockerfile and its per-service requirements, checked without a Docker engine.

Each service image installs ``deploy/docker/requirements/<target>.txt`` and the kadapt wheel with
``--no-deps``. That is only right if (1) those files keep pyproject's version ranges, and (2) they cover
every third-party module the service can import: at start-up (observed in a subprocess) and on any code
path (the static import closure of the service's package, function-level imports included). Torch must be
in neither.
"""

from __future__ import annotations

import ast
import http.server
import importlib.metadata
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (pyproject's tomli marker)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements"
SOURCES = (ROOT / "shared", ROOT / "services", ROOT / "clients")
SERVICE_TARGETS = {"gateway": "gateway", "sampler": "sampler", "recon": "recon", "recon-gpu": "recon"}
# Packages an image may list that pyproject does not: the CUDA libraries of the GPU build.
IMAGE_ONLY = re.compile(r"nvidia-[a-z0-9-]+")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of ``path``, following ``-r`` includes."""
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found += read_requirements(path.parent / line[3:].strip())
        else:
            found.append(Requirement(line))
    return found


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["cpu"]]
    listed += project["optional-dependencies"]["gpu"]
    return {_normalise(requirement.name): requirement for requirement in map(Requirement, listed)}


@cache
def _installed_closure(names: frozenset[str]) -> frozenset[str]:
    """``names`` and everything they require, from the installed distributions' metadata (this venv)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normalise(requirement.name))
    return frozenset(seen)


def allowed_distributions(requirements_file: str) -> frozenset[str]:
    """Distributions in an image built from ``requirements_file`` (the GPU runtime counts as the CPU one:
    this venv has the CPU build, and both provide the same ``onnxruntime`` module)."""
    names = {_normalise(r.name) for r in read_requirements(REQUIREMENTS / requirements_file)}
    names = {"onnxruntime" if name == "onnxruntime-gpu" else name for name in names}
    return _installed_closure(frozenset(names)) | {"kadapt"}


def _module_distributions() -> dict[str, set[str]]:
    return {
        module: {_normalise(d) for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }


def _third_party(module: str) -> bool:
    return module not in sys.stdlib_module_names and module not in {"kadapt", "__future__"}


def _kadapt_files(module: str) -> list[Path]:
    """The file(s) of ``kadapt.x.y`` over the three source roots: ``x/y.py`` or the package's modules."""
    parts = module.split(".")
    files: list[Path] = []
    for root in SOURCES:
        path = root.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            files.append(path.with_suffix(".py"))
        elif (path / "__init__.py").is_file():
            files.append(path / "__init__.py")
    return files


def _imports_of(tree: ast.Module, module_level_only: bool) -> Iterator[str]:
    """Imported module names in ``tree``: every import statement, or only those run at import time
    (outside functions, classes and ``if TYPE_CHECKING:`` blocks)."""
    if not module_level_only:
        nodes: list[ast.AST] = list(ast.walk(tree))
    else:
        nodes = []
        todo: list[ast.stmt] = list(tree.body)
        while todo:
            statement = todo.pop()
            nodes.append(statement)
            if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
                todo += statement.orelse
            elif isinstance(statement, ast.If | ast.Try | ast.With):
                todo += [
                    *statement.body,
                    *getattr(statement, "orelse", []),
                    *getattr(statement, "finalbody", []),
                ]
                todo += [child for handler in getattr(statement, "handlers", []) for child in handler.body]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def static_imports(start: list[Path], module_level_only: bool = False) -> dict[str, set[str]]:
    """Third-party top-level modules reachable from the files ``start`` through kadapt's own imports:
    all of them (function-level imports included, an over-approximation of what can run), or only
    what importing those modules loads (``module_level_only``)."""
    todo = list(start)
    seen: set[Path] = set()
    third_party: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports_of(ast.parse(path.read_text(), str(path)), module_level_only):
            top = name.split(".")[0]
            if top == "kadapt":
                parts = name.split(".")
                for depth in range(2, len(parts) + 1):
                    todo += _kadapt_files(".".join(parts[:depth]))
            elif _third_party(top):
                third_party.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return third_party


def package_files(package: str) -> list[Path]:
    """Every module of ``package`` (``kadapt.recon``) over the three source roots."""
    return [path for root in SOURCES for path in root.joinpath(*package.split(".")).rglob("*.py")]


def _missing(modules: dict[str, set[str]], requirements_file: str) -> dict[str, set[str]]:
    allowed = allowed_distributions(requirements_file)
    distributions = _module_distributions()
    return {
        module: where
        for module, where in modules.items()
        if not distributions.get(module, {f"<no distribution for {module}>"}) & allowed
    }


def test_requirement_files_keep_pyproject_version_ranges() -> None:
    pyproject = _pyproject_requirements()
    files = sorted(REQUIREMENTS.glob("*.txt"))
    assert {path.name for path in files} >= {f"{target}.txt" for target in SERVICE_TARGETS}
    for path in files:
        for requirement in read_requirements(path):
            name = _normalise(requirement.name)
            if IMAGE_ONLY.fullmatch(name):
                continue
            assert name in pyproject, f"{path.name}: {name} is not a kadapt dependency in pyproject.toml"
            if name == "onnxruntime-gpu":  # narrowed to the releases that ship CUDA 12 extras
                assert requirement.specifier.filter(["1.21.0", "1.24.1"]), requirement
                continue
            assert requirement.specifier == pyproject[name].specifier, f"{path.name}: {requirement}"
            assert requirement.marker == pyproject[name].marker, f"{path.name}: {requirement}"


def test_one_onnx_runtime_per_image_and_no_torch() -> None:
    for target in SERVICE_TARGETS:
        names = {_normalise(r.name) for r in read_requirements(REQUIREMENTS / f"{target}.txt")}
        assert not names & {"torch", "onnx", "onnxscript", "tensorboard"}, target
        assert len(names & {"onnxruntime", "onnxruntime-gpu"}) == (0 if target == "gateway" else 1), target


@pytest.mark.parametrize("service", ["gateway", "sampler", "recon"])
def test_requirements_cover_every_import_a_service_can_reach(service: str) -> None:
    imports = static_imports(package_files(f"kadapt.{service}"))
    assert "torch" not in imports, imports.get("torch")
    for target, source in SERVICE_TARGETS.items():
        if source == service:
            assert _missing(imports, f"{target}.txt") == {}, target


def test_the_command_line_imports_only_what_every_image_has() -> None:
    """Every image runs ``kadapt serve`` (the CLI, then uvicorn over kadapt.launcher.factories)."""
    start = _kadapt_files("kadapt.cli.main") + _kadapt_files("kadapt.launcher.factories")
    imports = static_imports(start, module_level_only=True)
    assert imports, "the CLI imports typer at least"
    assert _missing(imports, "common.txt") == {}


def _stage(target: str) -> str:
    text = DOCKERFILE.read_text()
    assert f" AS {target}\n" in text, target
    return text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]


@pytest.mark.parametrize("target", ["gateway", "sampler", "recon", "recon-gpu", "all"])
def test_service_images_run_as_a_user_with_a_healthcheck_and_the_entrypoint(target: str) -> None:
    stage = _stage(target)
    assert re.search(r"^USER 10001:10001$", stage, re.M), target
    assert 'ENTRYPOINT ["/opt/kadapt/entrypoint.sh"]' in stage, target
    if target != "all":
        assert "HEALTHCHECK" in stage, target
        assert "/readyz" in stage, target
        requirements = "recon-gpu" if target == "recon-gpu" else target
        venv_stage = _stage(f"{target}-venv")
        assert f"requirements/{requirements}.txt" in venv_stage, target
        assert "pip install --no-deps /wheels/*.whl" in venv_stage, target


def test_base_image_is_pinned() -> None:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", match.group(1))


def test_entrypoint_is_valid_sh() -> None:
    subprocess.run(["sh", "-n", str(ROOT / "deploy" / "docker" / "entrypoint.sh")], check=True)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_script_exits_zero_only_on_200(http_server: str) -> None:
    script = str(ROOT / "deploy" / "docker" / "healthcheck.py")

    def run(url: str) -> int:
        return subprocess.run([sys.executable, script, url], capture_output=True, check=False).returncode

    assert run(f"{http_server}/readyz") == 0
    assert run(f"{http_server}/other") == 1
    assert run("http://127.0.0.1:9/readyz") == 1  # nothing listens on the discard port
