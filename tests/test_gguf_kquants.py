"""GGUF K-quants: bytes the gguf package decodes onto the expected grids, llama.cpp's fallback for narrow layers,
and agreement byte for byte with llama.cpp's own reference quantizer (compiled from its sources, when available)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from quantcal.sources.models import resolve_source
from quantcal.recipes import gguf_kquants, parse_recipe

BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its source package carries llama.cpp's ggml-quants.c


def weights(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((32, 1024)) * rng.gamma(1.0, 1.0, (1, 1024))).astype(np.float32)
    w[3, :256] = 0  # an all-zero super-block
    w[5, 10] = 60  # an outlier
    w[6, 256:512] = np.abs(w[6, 256:512])  # a block with no negative weight (min clamps to 0)
    return w


@pytest.mark.parametrize("kind,levels,sub", [("q4_k", 16, 32), ("q5_k", 32, 32), ("q6_k", 64, 16)])
def test_kquant_bytes_decode_onto_the_grid(kind: str, levels: int, sub: int) -> None:
    from gguf import GGMLQuantizationType, quants

    w = weights(0)
    packed = gguf_kquants.quantize(w, kind)
    assert packed.shape == (32, 4 * BLOCK_BYTES[kind]) and packed.dtype == np.uint8
    back = quants.dequantize(packed, GGMLQuantizationType[kind.upper()])
    assert back.shape == w.shape and np.all(back[3, :256] == 0)
    assert max(np.unique(row).size for row in back.reshape(-1, sub)) <= levels
    error = float(np.linalg.norm(back - w) / np.linalg.norm(w))
    assert error < {"q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[kind]  # about halving per extra bit


def test_q4_k_falls_back_like_llama_cpp(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcal.recipes.build import build_variant, variant_meta

    monkeypatch.setenv("QUANTCAL_CACHE", str(tmp_path / "cache"))
    meta = variant_meta(build_variant(resolve_source(str(tiny_llama)), parse_recipe("gguf:q4_k")))
    # every linear of the tiny model reads 32 or 64 features, not a multiple of 256: all take Q5_0
    assert meta["gguf_type_counts"] == {"q5_0": 14} and len(meta["gguf_fallback_layers"]) == 14
    assert meta["bits_per_weight"] == pytest.approx(5.5)


@pytest.fixture(scope="module")
def llama_cpp_reference(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """llama.cpp's ggml-quants.c compiled without fused multiply-add (the reference arithmetic), from
    $LLAMA_CPP_SRC (a llama.cpp checkout) or llama-cpp-python's source package fetched with pip."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to compile llama.cpp's quantizer")
    root = os.environ.get("LLAMA_CPP_SRC")
    work = tmp_path_factory.mktemp("llama-cpp")
    if root is None:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                  LLAMA_CPP_PYTHON, "-d", str(work)], capture_output=True, text=True, timeout=600)
        archives = list(work.glob("*.tar.gz"))
        if fetched.returncode or not archives:
            pytest.skip(f"cannot fetch {LLAMA_CPP_PYTHON}'s sources: {fetched.stderr.strip()[-200:]}")
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/ggml/" in m.name and m.isfile()]
            tar.extractall(work, members=members, filter="data")
        root = str(next(work.glob("*/vendor/llama.cpp")))
    stubs = work / "stubs.c"  # symbols the reference quantizers never call
    stubs.write_text("#include <stddef.h>\n#include <stdlib.h>\n"
                     "void ggml_abort(const char *f, int l, const char *fmt, ...) { abort(); }\n"
                     "size_t ggml_row_size(int t, long n) { abort(); }\nconst char *ggml_type_name(int t) { abort(); }\n"
                     "size_t ggml_type_size(int t) { abort(); }\n")
    library = work / "libggml_quants.so"
    subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-std=gnu11", f"-I{root}/ggml/include",
                    f"-I{root}/ggml/src", f"{root}/ggml/src/ggml-quants.c", str(stubs), "-lm", "-o", str(library)],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(library))


@pytest.mark.heavy
@pytest.mark.parametrize("kind", ["q4_k", "q5_k", "q6_k"])
def test_kquants_equal_llama_cpp_byte_for_byte(kind: str, llama_cpp_reference: ctypes.CDLL) -> None:
    for seed in range(3):
        w = weights(seed)
        expected = np.zeros(w.size // 256 * BLOCK_BYTES[kind], dtype=np.uint8)
        quantize_row = getattr(llama_cpp_reference, f"quantize_row_q{kind[1]}_K_ref")
        quantize_row(w.ctypes.data_as(ctypes.c_void_p), expected.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(w.size))
        assert np.array_equal(gguf_kquants.quantize(w, kind).reshape(-1), expected)
