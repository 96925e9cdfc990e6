"""Build script for minitx's Cython kernels (package `minitx_c`).

Every `minitx_c/*.pyx` becomes one extension module `minitx_c.<name>`. Extensions are optional:
if a compiler is missing or a kernel fails to build, installation still succeeds and minitx runs
its NumPy reference (see `minitx.backend`).

Environment switches:
  MINITX_PORTABLE=1   build without -march=native (a wheel that runs on any x86-64 / arm64).
  MINITX_NO_OPENMP=1  build serial kernels even when the compiler supports OpenMP.
"""
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_accepts(flags):
    """True if the C compiler compiles and links a tiny OpenMP program with `flags`."""
    cc = os.environ.get("CC", "cc")
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            res = subprocess.run([cc, *flags, path, "-o", os.path.join(tmp, "t")],
                                 capture_output=True)
        except OSError:
            return False
        return res.returncode == 0


def _flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], [], True
    compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
    if os.environ.get("MINITX_PORTABLE") != "1":
        compile_args.append("-march=native")
    link_args = []
    use_omp = os.environ.get("MINITX_NO_OPENMP") != "1" and _compiler_accepts(["-fopenmp"])
    if use_omp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return compile_args, link_args, use_omp


# Flags for one extension on top of _flags(). fused_ops: its AdamW update must round like
# NumPy's step-by-step arithmetic, so no contraction of a*b + c into a fused multiply-add.
EXTRA_COMPILE_ARGS = {"minitx_c.fused_ops": ["-ffp-contract=off"]}


def _extensions():
    compile_args, link_args, _ = _flags()
    exts = []
    for pyx in sorted(glob.glob(os.path.join("minitx_c", "*.pyx"))):
        name = "minitx_c." + os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            name, [pyx],
            include_dirs=[np.get_include(), "minitx_c"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args + (EXTRA_COMPILE_ARGS.get(name, [])
                                               if sys.platform != "win32" else []),
            extra_link_args=link_args,
            optional=True,
        ))
    return cythonize(exts, language_level=3, compiler_directives={"embedsignature": True})


class build_ext_and_copy_inplace(build_ext):
    """Build as usual, then also copy each built extension next to its .pyx in the source tree.

    `python -m minitx ...` run from a checkout puts the checkout first on sys.path, so Python
    imports the source `minitx_c/` rather than the installed one; with the compiled modules
    copied there, both find the same kernels (as after `build_ext --inplace`).
    """

    def run(self):
        super().run()
        if self.inplace:
            return
        for ext in self.extensions:
            built = self.get_ext_fullpath(ext.name)
            if not os.path.exists(built):          # an optional extension that failed
                continue
            target = os.path.join(*ext.name.split(".")[:-1], os.path.basename(built))
            try:
                self.copy_file(built, target)
            except OSError as e:                   # e.g. a read-only source tree
                print(f"note: could not copy {built} into the source tree ({e})")


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext_and_copy_inplace})
