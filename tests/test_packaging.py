"""What a release ships, and how CI builds, tests and publishes it.

* release builds leave the debug information out of the compiled extensions
  on gcc/clang (``setup.py``), and an installed release build has none;
* cibuildwheel builds every CPython the dependencies have wheels for, and
  tests each wheel by running the test suite against it (``pyproject.toml``);
* the workflow (``.github/workflows/wheels.yml``) runs the tests before
  anything is built, installs and tests the sdist, uses cibuildwheel 3 or
  later, and publishes a published release to PyPI by trusted publishing.

Nothing is built here. The checks of a file are skipped (saying why) where
the tests run without the source tree beside them (e.g. from the sdist,
which has no ``.github/``).
"""

from __future__ import annotations

import importlib.util
import re
import struct
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUP_PY = ROOT / "setup.py"
PYPROJECT = ROOT / "pyproject.toml"
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
EXTENSIONS = ("_ctc", "_fbank", "_states")


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"no {path} (the tests run without the source tree beside them)")
    return path


# ------------------------------------------------------------ setup.py


def load_setup() -> ModuleType:
    """setup.py as a module, without running setup() (that needs __main__)."""
    spec = importlib.util.spec_from_file_location("trio_asr_setup", need(SETUP_PY))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("compiler_type", ["unix", "mingw32"])
def test_release_builds_leave_out_debug_info_on_gcc_and_clang(compiler_type):
    flags = load_setup().debug_info_flags
    compile_args, link_args = flags(compiler_type, "linux" if compiler_type == "unix" else "win32", False)
    assert compile_args[-1] == "-g0", "compiled without debug information (the last -g option wins)"
    assert "-s" in link_args, "linked stripped"


def test_release_builds_on_macos_leave_out_debug_info_and_local_symbols():
    compile_args, link_args = load_setup().debug_info_flags("unix", "darwin", False)
    assert compile_args[-1] == "-g0"
    assert "-Wl,-x" in link_args and "-s" not in link_args  # ld64 has no use for -s


def test_msvc_and_development_builds_are_left_alone():
    flags = load_setup().debug_info_flags
    assert flags("msvc", "win32", False) == ([], [])
    assert flags("unix", "linux", True) == ([], [])  # pip install -e ., build_ext --inplace


def elf_section_names(data: bytes) -> list[str]:
    """The section names of an ELF file (32/64-bit, either byte order)."""
    assert data[:4] == b"\x7fELF"
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        shoff, = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)

    def section(index: int) -> tuple[int, int, int]:  # (name offset, file offset, size)
        at = shoff + index * shentsize
        if wide:
            name, = struct.unpack_from(order + "I", data, at)
            offset, size = struct.unpack_from(order + "QQ", data, at + 0x18)
        else:
            name, = struct.unpack_from(order + "I", data, at)
            offset, size = struct.unpack_from(order + "II", data, at + 0x10)
        return name, offset, size

    _, strings_at, strings_size = section(shstrndx)
    strings = data[strings_at : strings_at + strings_size]
    names = []
    for index in range(shnum):
        name = section(index)[0]
        names.append(strings[name : strings.index(b"\0", name)].decode())
    return names


def make_elf(names: list[str], wide: bool, order: str) -> bytes:
    """A minimal ELF file whose sections have these names (and no contents)."""
    strings = b"\0" + b"".join(name.encode() + b"\0" for name in [".shstrtab", *names])
    header_size, entry_size = (64, 64) if wide else (52, 40)
    shoff = header_size + len(strings)
    count = 2 + len(names)  # the null section, .shstrtab, then names
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, count, 1)
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 3, 3, 1, 0, 0, shoff, 0, 52, 0, 0, 40, count, 1)

    def entry(name: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack(order + "IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)
        return struct.pack(order + "IIIIIIIIII", name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    entries = [bytes(entry_size), entry(1, header_size, len(strings))]
    for name in names:
        entries.append(entry(strings.index(b"\0" + name.encode() + b"\0") + 1, 0, 0))
    return header + strings + b"".join(entries)


@pytest.mark.parametrize(("wide", "order"), [(True, "<"), (False, ">")])
def test_the_elf_reader_finds_debug_sections(wide, order):
    names = elf_section_names(make_elf([".text", ".debug_info", ".symtab"], wide, order))
    assert names == ["", ".shstrtab", ".text", ".debug_info", ".symtab"]


def test_an_installed_release_build_carries_no_debug_info():
    import trio_asr

    package = Path(trio_asr.__file__).resolve().parent
    if package == ROOT / "trio_asr":
        pytest.skip("trio_asr is the source tree's (a development build, which keeps its debug information)")
    for name in EXTENSIONS:
        module = importlib.import_module(f"trio_asr.{name}")
        data = Path(module.__file__).read_bytes()
        if data[:4] != b"\x7fELF":
            pytest.skip(f"{module.__file__} is not an ELF file")
        sections = elf_section_names(data)
        debug = [section for section in sections if section.startswith((".debug", ".zdebug"))]
        assert not debug, f"{module.__file__} carries debug information: {debug}"
        assert ".symtab" not in sections, f"{module.__file__} is not stripped"


# ------------------------------------------------------------ pyproject.toml


def cibuildwheel() -> dict:
    return tomllib.loads(need(PYPROJECT).read_text(encoding="utf-8"))["tool"]["cibuildwheel"]


def patterns(value: str | list[str]) -> list[str]:
    return value.split() if isinstance(value, str) else [p for item in value for p in item.split()]


def selected(identifier: str, config: dict) -> bool:
    build, skip = patterns(config.get("build", "*")), patterns(config.get("skip", ""))
    return any(fnmatch(identifier, p) for p in build) and not any(fnmatch(identifier, p) for p in skip)


@pytest.mark.parametrize("python", ["cp310", "cp311", "cp312", "cp313", "cp314"])
@pytest.mark.parametrize(
    "platform", ["manylinux_x86_64", "manylinux_aarch64", "macosx_arm64", "win_amd64"]
)
def test_wheels_are_built_for_every_supported_cpython(python, platform):
    assert selected(f"{python}-{platform}", cibuildwheel())


def test_wheels_are_built_for_intel_macos_up_to_cpython_3_13():
    # onnxruntime's last Intel macOS wheels (1.23.2) are for CPython 3.10-3.13.
    config = cibuildwheel()
    assert selected("cp313-macosx_x86_64", config)
    assert not selected("cp314-macosx_x86_64", config)


def test_no_wheels_that_could_not_be_installed_are_built():
    # onnxruntime publishes no musllinux wheels.
    assert not selected("cp313-musllinux_x86_64", cibuildwheel())


def test_each_wheel_is_tested_with_the_test_suite():
    config = cibuildwheel()
    assert "test" in config["test-extras"]
    assert re.match(r"pytest \{project\}/tests\b", config["test-command"])


# ------------------------------------------------------------ the workflow


def workflow_jobs(text: str) -> dict[str, str]:
    """Each job's name and its block of text (the workflow's `jobs:` mapping)."""
    jobs_at = re.search(r"^jobs:\s*$", text, re.M)
    assert jobs_at, "no jobs: in the workflow"
    blocks = re.split(r"^  ([A-Za-z_][\w-]*):\s*$", text[jobs_at.end() :], flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2]))


def needs(job: str) -> set[str]:
    found = re.search(r"^    needs:\s*(\[[^\]]*\]|\S+)\s*$", job, re.M)
    return set(re.findall(r"[\w-]+", found.group(1))) if found else set()


def steps_using(job: str, action: str) -> list[str]:
    return re.findall(rf"uses:\s*{re.escape(action)}@(\S+)", job)


@pytest.fixture
def jobs() -> dict[str, str]:
    return workflow_jobs(need(WORKFLOW).read_text(encoding="utf-8"))


def test_the_workflow_reader_reads_jobs_and_needs():
    jobs = workflow_jobs("on: push\njobs:\n  a:\n    runs-on: x\n  b:\n    needs: [a, c-d]\n  e:\n    needs: b\n")
    assert set(jobs) == {"a", "b", "e"}
    assert needs(jobs["a"]) == set() and needs(jobs["b"]) == {"a", "c-d"} and needs(jobs["e"]) == {"b"}


def test_nothing_is_built_before_the_tests_pass(jobs):
    assert "bash .ci/run" in jobs["test"]
    assert needs(jobs["wheels"]) >= {"test"}
    assert needs(jobs["sdist"]) >= {"test"}


def test_wheels_are_built_by_cibuildwheel_3_or_later(jobs):
    (version,) = steps_using(jobs["wheels"], "pypa/cibuildwheel")
    assert int(re.match(r"v(\d+)", version).group(1)) >= 3, version


def test_the_sdist_is_installed_in_a_fresh_venv_and_tested(jobs):
    sdist = jobs["sdist"]
    assert re.search(r"python -m build --sdist", sdist)
    assert re.search(r"-m venv ", sdist)
    assert re.search(r"pip install \"\$sdist\[test\]\"", sdist) and "*.tar.gz" in sdist
    assert re.search(r"assert \"site-packages\" in trio_asr.__file__", sdist)
    assert re.search(r"bin/pytest\" \S*tests", sdist)


def test_a_published_release_goes_to_pypi_by_trusted_publishing(jobs):
    text = WORKFLOW.read_text(encoding="utf-8")
    assert re.search(r"^  release:\s*\n    types: \[published\]", text, re.M)
    publish = jobs["publish"]
    assert needs(publish) >= {"sdist", "wheels"}
    assert re.search(r"^    if: github\.event_name == 'release' && github\.event\.action == 'published'$", publish, re.M)
    assert re.search(r"^    environment:\s*\n      name: pypi$", publish, re.M)
    assert re.search(r"^    permissions:\s*\n      id-token: write$", publish, re.M)
    assert steps_using(publish, "pypa/gh-action-pypi-publish") == ["release/v1"]
    assert not re.search(r"password:|api-token|secrets\.", publish), "trusted publishing needs no token"
    # The only job that may ask for an OIDC token.
    assert [name for name, job in jobs.items() if "id-token: write" in job] == ["publish"]
