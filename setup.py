"""Builds cluster_ext._core from src/*.c (Linux only)."""
import os
import sys
from glob import glob

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit("cluster_ext needs Linux (epoll, pidfd, SCM_RIGHTS); "
             f"this is {sys.platform}")

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wshadow",
                "-Wstrict-prototypes", "-Wmissing-prototypes",
                "-fvisibility=hidden"]
link_args = []
if os.environ.get("CX_SANITIZE") == "1":
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                     "-UNDEBUG", "-O1", "-g"]
    link_args += ["-fsanitize=address,undefined"]

setup(
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
