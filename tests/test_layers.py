"""The package's layer rule (see ``trio_asr/__init__.py``): a module imports
from its own layer and the ones below it only."""

import ast
from pathlib import Path

import trio_asr

PACKAGE = Path(trio_asr.__file__).parent
#: layer of each top-level name inside trio_asr, lowest first
LAYERS = {
    "audio": 0, "audio_files": 0, "bounds": 0, "_version": 0, "_fbank": 0, "_ctc": 0, "_states": 0,
    "recognition": 1, "testing": 1, "protocol": 2, "serving": 3, "cli": 4, "__main__": 4,
}  # fmt: skip


def layer_of(module: str) -> int:
    """The layer of a dotted module name under trio_asr (``trio_asr`` itself: 0)."""
    parts = module.split(".")
    assert parts[0] == "trio_asr", module
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every trio_asr import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if base == "trio_asr"]
    return [(line, name) for line, name in found if name.split(".")[0] == "trio_asr"]


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        here = layer_of(module_name(path, root))
        for line, name in imports(path, root):
            if name != "trio_asr" and layer_of(name) > here:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {name} from a higher layer")
    return bad


def test_every_module_has_a_layer():
    names = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir() if not p.name.startswith("__py")}
    names = {n.split(".")[0] for n in names} - {"__init__", "py"}
    assert names <= set(LAYERS), f"modules without a layer: {sorted(names - set(LAYERS))}"


def test_no_module_imports_from_a_higher_layer():
    assert violations() == []


def test_only_tests_and_benchmarks_import_the_testing_helpers():
    """trio_asr.testing builds fixture models (it needs onnx); nothing that
    serves or recognises may depend on it."""
    users = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "testing" not in path.relative_to(PACKAGE).parts
        for line, name in imports(path)
        if name.startswith("trio_asr.testing")
    ]
    assert users == []


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "trio_asr" / "recognition"
    bad.mkdir(parents=True)
    (bad / "leak.py").write_text("from trio_asr.serving.server import serve\nfrom ..protocol import messages\n")
    found = violations(tmp_path / "trio_asr")
    assert len(found) == 2 and all("higher layer" in line for line in found)


def test_few_modules_sit_at_the_top():
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= 10, sorted(p.name for p in top)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
