"""Build hook: compile ``resilience._speedups`` (src/resilience/_speedups.c) when it can.

The extension is optional. Without a C compiler, on another Python implementation, on a
free-threaded build, or with ``RESILIENCE_NO_EXTENSIONS=1`` set, the wheel is pure
Python and the package uses its Python code instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/resilience/_speedups.c")


def _wanted() -> str | None:
    """Why the extension is not built, or ``None`` to build it."""
    if os.environ.get("RESILIENCE_NO_EXTENSIONS", "") not in {"", "0"}:
        return "RESILIENCE_NO_EXTENSIONS is set"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} runs the Python code as fast"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "a free-threaded build uses the Python code"
    return None


def _compile(root: Path, out_dir: Path, temp_dir: Path) -> Path:
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    extension = Extension("resilience._speedups", [str(root / SOURCE)])
    command = build_ext(Distribution({"name": "resilience", "ext_modules": [extension]}))
    command.build_lib = str(out_dir)
    command.build_temp = str(temp_dir)
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath("resilience._speedups"))


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "speedups"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        package = root / "src" / "resilience"
        if version == "editable":
            # An editable install imports the extension from src/: none but this build's.
            for stale in [*package.glob("_speedups.*.so"), *package.glob("_speedups.*.pyd")]:
                stale.unlink()
        why_not = _wanted()
        if why_not is not None:
            self.app.display_info(f"resilience: not compiling the speedups ({why_not})")
            return
        work = Path(tempfile.mkdtemp(prefix="resilience-speedups-"))
        try:
            built = _compile(root, work / "lib", work / "temp")
        except Exception as exc:  # no compiler, no headers: the Python code serves
            self.app.display_warning(
                f"resilience: the speedups were not compiled ({exc!r}); "
                "the package runs its Python code instead"
            )
            shutil.rmtree(work, ignore_errors=True)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":
            # An editable install imports from src/: the extension goes next to its source.
            shutil.copy2(built, package / built.name)
        else:
            kept = Path(tempfile.mkdtemp(prefix="resilience-wheel-")) / built.name
            shutil.copy2(built, kept)
            build_data["force_include"][str(kept)] = f"resilience/{built.name}"
        shutil.rmtree(work, ignore_errors=True)
