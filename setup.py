"""Packaging glue that pyproject.toml cannot express: the firmware, guest and native sources (C and
assembly, built with gcc on first use by machine/toolchain.py) travel inside the wheel as
machine/_bundled/{firmware,guest,native}, so an installed package runs `python3 -m machine` without a
checkout. An editable install uses the checkout's directories directly and copies nothing."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED_SOURCES = ("firmware", "guest", "native")


class build_py_with_sources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in BUNDLED_SOURCES:
            dest = Path(self.build_lib) / "machine" / "_bundled" / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(HERE / name, dest,
                            ignore=shutil.ignore_patterns("out", "__pycache__", "*.o"))


setup(cmdclass={"build_py": build_py_with_sources})
