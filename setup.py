"""Builds the `mmattn._C` extension: C++ kernels always, CUDA kernels when nvcc is found.

Environment:
  MMATTN_CUDA=0          force a CPU-only build even when nvcc exists.
  TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (default "8.0;9.0").
"""
import glob
import os
import sys

from setuptools import setup

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"  # before torch guesses it from nvcc's path
ROOT = os.path.dirname(os.path.abspath(__file__))

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)


def _want_cuda() -> bool:
    if os.environ.get("MMATTN_CUDA", "1") == "0":
        return False
    return cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))


def _pip_cuda_dirs(sub: str) -> list[str]:
    """Directories of torch's pip CUDA packages, e.g. headers a bare toolkit lacks (cusparse.h)."""
    return [d for d in (os.path.join(p, "nvidia", "cu13", sub) for p in sys.path) if os.path.isdir(d)]


def _cudart_link_args(ext) -> None:
    """Link the CUDA runtime from the toolkit, else from torch's pip package (libcudart.so.13)."""
    toolkit = [os.path.join(cpp_extension.CUDA_HOME, d) for d in ("lib64", "lib")]
    if any(os.path.exists(os.path.join(d, "libcudart.so")) for d in toolkit):
        return
    for d in _pip_cuda_dirs("lib"):
        found = sorted(glob.glob(os.path.join(d, "libcudart.so.*")))
        if found:
            ext.libraries.remove("cudart")
            ext.library_dirs.append(d)
            ext.extra_link_args.append("-l:" + os.path.basename(found[0]))
            return


def extension():
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is an inline header that runs in parallel only where _OPENMP
    # is defined (torch's own builds); without it every CPU kernel here ran on one thread. The
    # runtime is torch's libgomp.so.1 (same soname, already loaded). The CPU kernels also mark
    # their reductions `#pragma omp simd` so they vectorise without reassociating anything else.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        print("mmattn: building CPU-only (no nvcc found or MMATTN_CUDA=0)")
        return cpp_extension.CppExtension(
            "mmattn._C", cpu_sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, py_limited_api=False)
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    print(f"mmattn: building with CUDA for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    ext = cpp_extension.CUDAExtension(
        "mmattn._C", cpu_sources + cuda_sources,
        include_dirs=include_dirs + _pip_cuda_dirs("include"),
        define_macros=[("MMATTN_WITH_CUDA", None)],
        extra_link_args=link_flags,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
                     "--expt-relaxed-constexpr"],
        })
    _cudart_link_args(ext)
    return ext


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
