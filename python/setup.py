"""Build hooks of the gdn package (the metadata is in pyproject.toml).

- The version is the C library's, read from ../include/gdn.h (or from PKG-INFO in an sdist).
- build_py writes gdn/_version.py into the build (not the source tree) and, when `make` has
  built ../build/libgdn.so, copies it next to the package so that an installed gdn finds it.
  The wheel is then platform-specific (py3-none-<platform>): it holds a shared library, though
  no Python extension. GDN_BUNDLE_LIBRARY=0 leaves the library out (the package then finds it
  through $GDN_LIBRARY or the system's library path).
"""
import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
HEADER = HERE.parent / "include" / "gdn.h"
LIBRARY = HERE.parent / "build" / "libgdn.so"


def _header_version(header):
    # Loaded by path: importing the gdn package would load the library it is about to package.
    spec = importlib.util.spec_from_file_location("_gdn_header", HERE / "gdn" / "_header.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.header_version(header)


def package_version():
    if HEADER.is_file():
        return _header_version(HEADER)
    pkg_info = HERE / "PKG-INFO"  # an sdist carries the version it was made with
    if pkg_info.is_file():
        for line in pkg_info.read_text().splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    raise RuntimeError(f"gdn: cannot find {HEADER} to read the version from; build from the gdn repository")


def bundles_library():
    return LIBRARY.is_file() and os.environ.get("GDN_BUNDLE_LIBRARY", "1") != "0"


class BuildPy(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "gdn"
        target.mkdir(parents=True, exist_ok=True)
        (target / "_version.py").write_text(f'__version__ = "{package_version()}"\n')
        if bundles_library():
            shutil.copy2(LIBRARY, target / "libgdn.so")


class BdistWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = not bundles_library()

    def get_tag(self):
        python, abi, platform = super().get_tag()
        # ctypes needs no particular Python ABI, only the platform of the bundled library.
        return ("py3", "none", platform) if bundles_library() else (python, abi, platform)


setup(version=package_version(), cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
