"""Build the compiled parts: every ``csrc/<name>.pyx`` becomes ``trio_asr._<name>``.

Release builds (wheels, and installs from the sdist) carry no debug information:
on gcc/clang, where Python's own CFLAGS ask for ``-g``, the extensions are
compiled with ``-g0`` and linked stripped, which makes a wheel about four times
smaller. Development builds (``pip install -e .``, ``setup.py build_ext
--inplace``) keep the debug information, for debuggers and profilers. MSVC is
left alone: its release flags have no debug information to begin with.
"""

from pathlib import Path

HERE = Path(__file__).parent


def debug_info_flags(
    compiler_type: str, platform: str, development: bool
) -> tuple[list[str], list[str]]:
    """The extra (compile, link) arguments that leave out the debug information.

    ``compiler_type`` is distutils' name for the compiler ("unix" for gcc and
    clang, "mingw32"/"cygwin" for gcc on Windows, "msvc"), ``platform`` is
    ``sys.platform``; ``development`` is true for in-place and editable builds.
    """
    if development or compiler_type not in ("unix", "mingw32", "cygwin"):
        return [], []
    # The last -g option wins, and these come after Python's CFLAGS.
    compile_args = ["-g0"]
    if platform == "darwin":
        # ld64 has no debug information to strip (it stays in the object
        # files); -x leaves the local symbols out of the symbol table.
        link_args = ["-Wl,-x"]
    else:
        link_args = ["-s"]  # GNU ld / lld: strip the symbol table and any debug sections
    return compile_args, link_args


def main() -> None:
    import sys

    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    from setuptools.command.build_ext import build_ext

    class ReleaseBuildExt(build_ext):
        """``build_ext`` that strips the debug information from release builds."""

        def build_extensions(self) -> None:
            development = bool(self.inplace or getattr(self, "editable_mode", False))
            compile_args, link_args = debug_info_flags(
                self.compiler.compiler_type, sys.platform, development
            )
            for ext in self.extensions:
                ext.extra_compile_args = [*ext.extra_compile_args, *compile_args]
                ext.extra_link_args = [*ext.extra_link_args, *link_args]
            super().build_extensions()

    extensions = [
        Extension(
            f"trio_asr._{pyx.stem}",
            sources=[str(pyx.relative_to(HERE))],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for pyx in sorted((HERE / "csrc").glob("*.pyx"))
    ]

    setup(
        cmdclass={"build_ext": ReleaseBuildExt},
        ext_modules=cythonize(
            extensions,
            language_level=3,
            compiler_directives={
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
            },
        ),
    )


# setuptools' build backend runs this file as __main__; tests import it to
# read debug_info_flags without building anything.
if __name__ == "__main__":
    main()
