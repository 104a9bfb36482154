"""Builds cluster_ext._core from src/*.c (Linux only)."""
import os
import subprocess
import sys
import sysconfig
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

if not sys.platform.startswith("linux"):
    sys.exit("cluster_ext needs Linux (epoll, pidfd, SCM_RIGHTS); "
             f"this is {sys.platform}")

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wshadow",
                "-Wstrict-prototypes", "-Wmissing-prototypes",
                # a C API that a Python release removed fails the build, not the import
                "-Werror=implicit-function-declaration",
                "-fvisibility=hidden"]
link_args = []
if os.environ.get("CX_SANITIZE") == "1":
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                     "-UNDEBUG", "-O1", "-g"]
    link_args += ["-fsanitize=address,undefined"]

INSTALL = ("on Debian or Ubuntu `apt-get install gcc python3-dev`, on Fedora "
           "`dnf install gcc python3-devel`, on Alpine `apk add gcc musl-dev python3-dev`")


def _runs(compiler):
    try:
        return subprocess.run([compiler, "--version"], capture_output=True).returncode == 0
    except OSError:
        return False


class BuildExt(build_ext):
    """Names what to install when the compiler or Python's headers are missing."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError):
            compiler = (getattr(self.compiler, "compiler_so", None) or ["cc"])[0]
            headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
            if not _runs(compiler):
                sys.exit(f"error: building cluster_ext from source needs a C compiler, and "
                         f"{compiler!r} does not run; {INSTALL}")
            if not os.path.exists(headers):
                sys.exit(f"error: building cluster_ext from source needs Python's headers, "
                         f"and {headers} is not there; {INSTALL}")
            raise


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "cluster_ext._core",
            sorted(glob("src/*.c")),
            depends=sorted(glob("src/*.h")),
            include_dirs=["src"],
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
)
