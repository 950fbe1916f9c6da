"""Every registered format through its real library on CPU: loads, guard passes, or a stated reason."""

import pytest
import torch

from quantbench.bench.pool import ModelPool, ModelSource
from quantbench.errors import Unsupported
from quantbench.formats import FORMATS, get_format

from .conftest import needs_gptqmodel

CPU_UNSUPPORTED = {"awq-gemv": "awq_ext", "awq-gemm-fused": "CUDA", "awq-gemm-hf": "",
                   # gptqmodel's CUDA kernels; on transformers 4.x none of the backends (awq-gemm-hf-torch too)
                   **{name: "gptqmodel" for name in ("awq-gemm-hf-torch", "awq-gemm-hf-gemm", "awq-gemm-hf-triton",
                                                     "awq-gemm-hf-marlin", "awq-gemm-hf-machete", "awq-gemv-hf")},
                   "ct-w4a16-nodispatch": "compressed_tensors.offload",  # these two: compressed-tensors 0.10 only
                   "ct-w4a16-bare": "compressed_tensors.offload",
                   # GPTQ's CUDA kernels, in gptqmodel's words
                   **{f"gptq-{name}": "gptqmodel has no GPTQ kernel for backend" for name in
                      ("triton", "marlin", "exllamav2", "machete")},
                   # torchao 0.18 runs int4 weight-only on a CPU only in a form it cannot save
                   "torchao-int4wo": "no saveable int4 weight-only packing for cpu"}
# What the legacy stack (transformers 4.51, no gptqmodel, bitsandbytes or torchao) says instead
LEGACY_UNSUPPORTED = {"gptq": "transformers 4.x loads GPTQ through optimum and auto-gptq",
                      "bnb": "bitsandbytes is not installed", "torchao": "torchao is not installed"}


def expected_reason(name: str) -> str | None:
    import transformers
    family = name.split("-")[0]
    if transformers.__version__.startswith("4.") and family in LEGACY_UNSUPPORTED:
        return LEGACY_UNSUPPORTED[family]
    return CPU_UNSUPPORTED.get(name)


@pytest.fixture(scope="module")
def pool(tiny_checkpoints):
    pool = ModelPool(torch.device("cpu"))
    yield pool
    pool.release()


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_loads_and_passes_the_guard_or_says_why_not(pool, name):
    fmt = get_format(name)
    try:
        prepared = pool.get(ModelSource.from_spec("tiny"), name)
    except Unsupported as exc:
        assert expected_reason(name) is not None and expected_reason(name) in str(exc), str(exc)
        return
    guard = prepared.guard
    print(f"{name}: {guard.message()}")
    assert guard.passed, guard.message()
    assert guard.cosine_vs_dense >= fmt.min_cosine
    facts = prepared.loaded.facts
    assert facts["kernel"] and facts["weight_bytes_after_load"] > 0 and facts["disk_bytes"] > 0
    if fmt.bits is not None:
        # exact check against the library's own dequantized weights (ct's QDQ forward, GPTQ's unpacked
        # qweight, bitsandbytes' and torchao's dequantize, the weights AutoAWQ's quantize packed with the
        # norms its scale search changed): the same-weights reference an engine's full-depth guard decides on
        assert guard.cosine_vs_fakequant is not None


def test_awq_gemm_runs_autoawq_modules_on_the_naive_path(pool):
    prepared = pool.get(ModelSource.from_spec("tiny"), "awq-gemm")
    assert prepared.loaded.facts["linear_classes"] == {"WQLinear_GEMM": 14}
    assert prepared.loaded.facts["kernel"] == "naive-dequant"


def test_int4_weights_are_smaller_after_load(pool):
    dense = pool.get(ModelSource.from_spec("tiny"), "fp16").loaded.facts["weight_bytes_after_load"]
    for name in ("awq-gemm", "ct-w4a16"):
        assert pool.get(ModelSource.from_spec("tiny"), name).loaded.facts["weight_bytes_after_load"] < 0.5 * dense


def test_ct_w4a16_records_what_the_first_forward_did(pool):
    facts = pool.get(ModelSource.from_spec("tiny"), "ct-w4a16").loaded.facts
    assert "still_compressed_after_first_forward" in facts
    # transformers 5 decompresses to dense; 4.x keeps a dense copy beside the packed weights:
    # either way the resident bytes grow on the first forward (the seed's "no memory saving").
    assert facts["weight_bytes_after_first_forward"] > facts["weight_bytes_after_load"]
    assert not facts["still_compressed_after_first_forward"]


def _python_files_called(model, ids) -> set[str]:
    """Source files of every Python function a forward calls (deterministic, unlike a timing)."""
    import sys
    files = set()

    def profile(frame, event, arg):
        if event == "call":
            files.add(frame.f_code.co_filename.replace("\\", "/"))
    sys.setprofile(profile)
    try:
        with torch.no_grad():
            model(ids)
    finally:
        sys.setprofile(None)
    return files


def test_ct_offload_dispatch_is_recorded_and_the_nodispatch_variant_removes_it(pool):
    from quantbench.formats.compressed_tensors import ct_dispatched_modules
    tiny, ids = ModelSource.from_spec("tiny"), torch.randint(0, 256, (1, 4))
    reason = get_format("ct-w4a16-nodispatch").unsupported_reason(torch.device("cpu"))
    default = pool.get(tiny, "ct-w4a16").loaded
    if reason:  # compressed-tensors 0.10 (legacy stack): no such dispatch, and the variant says so
        assert "no offload dispatch" in reason and "dispatch" not in default.facts["kernel"]
        return
    # compressed-tensors puts every module behind its offload dispatch when it decompresses
    assert ct_dispatched_modules(default.model) > 0
    assert "behind compressed-tensors offload dispatch on" in default.facts["kernel"]
    assert any("compressed_tensors/offload" in f for f in _python_files_called(default.model, ids))
    stripped = pool.get(tiny, "ct-w4a16-nodispatch")
    assert stripped.guard.passed, stripped.guard.message()
    assert stripped.loaded.facts["ct_dispatch_removed_modules"] == ct_dispatched_modules(default.model)
    assert ct_dispatched_modules(stripped.loaded.model) == 0 and "dispatch" not in stripped.loaded.facts["kernel"]
    assert not any("compressed_tensors/offload" in f for f in _python_files_called(stripped.loaded.model, ids))
    assert not stripped.loaded.facts["still_compressed_after_first_forward"]  # same dense weights as ct-w4a16
    # What is left: compressed-tensors' own forward wrapper on every Linear; ct-w4a16-bare removes it too.
    from quantbench.formats.compressed_tensors import ct_wrapped_modules
    wrapped = len(ct_wrapped_modules(stripped.loaded.model))
    assert wrapped > 0 and f"forward wrapper on {wrapped} modules" in stripped.loaded.facts["kernel"]
    bare = pool.get(tiny, "ct-w4a16-bare")
    assert bare.guard.passed, bare.guard.message()
    assert bare.loaded.facts["ct_forward_wrappers_removed"] == wrapped and not ct_wrapped_modules(bare.loaded.model)
    assert bare.loaded.facts["kernel"] == "Linear [dense float16] -> torch.matmul"
    assert not any("compressed_tensors/" in f for f in _python_files_called(bare.loaded.model, ids))
    assert abs(bare.guard.cosine_vs_dense - stripped.guard.cosine_vs_dense) < 1e-6  # the wrapper changed no number


def test_gptq_runtime_is_a_stated_state_not_a_crash():
    reason = get_format("awq-gemm-hf").unsupported_reason(torch.device("cpu"))
    import importlib.util

    import transformers
    if transformers.__version__.startswith("4."):
        assert "IPEX" in reason
    elif importlib.util.find_spec("gptqmodel") is None:
        assert "gptqmodel" in reason
    else:
        assert reason is None


@needs_gptqmodel
def test_awq_gemm_hf_runs_the_kernel_gptqmodel_picks_and_names_it(pool):
    import os
    facts = pool.get(ModelSource.from_spec("tiny"), "awq-gemm-hf").loaded.facts
    assert facts["linear_classes"] == {"TorchAtenAwqLinear": 14}  # gptqmodel's CPU pick: ATen int4pack_mm
    assert "backend=auto -> TorchAtenAwqLinear: torch int4pack_mm" in facts["kernel"]
    assert facts["kernel_select_s"] is not None and facts["weight_bytes_after_first_forward"] < \
        0.5 * pool.get(ModelSource.from_spec("tiny"), "fp16").loaded.facts["weight_bytes_after_first_forward"]
    # gptqmodel's import sets the CUDA allocator config for the whole process; it is undone.
    assert "PYTORCH_ALLOC_CONF" in facts["gptqmodel_env_undone"]
    assert os.environ.get("PYTORCH_ALLOC_CONF") != facts["gptqmodel_env_undone"]["PYTORCH_ALLOC_CONF"]


@needs_gptqmodel
def test_a_named_gptqmodel_backend_runs_that_kernel_or_the_case_fails(pool, monkeypatch):
    facts = pool.get(ModelSource.from_spec("tiny"), "awq-gemm-hf-torch").loaded.facts
    assert facts["linear_classes"] == {"AwqTorchLinear": 14} and facts["gptqmodel_backend"] == "torch_awq"
    pool.release()
    from quantbench.formats import gptqmodel as module
    fmt = get_format("awq-gemm-hf-torch")
    ckpt = ModelSource.from_spec("tiny").checkpoint("awq-gemm-hf-torch", torch.device("cpu"))
    # Had gptqmodel put another class in than the one selected for the backend: no silent fallback.
    monkeypatch.setitem(module._SELECTIONS, ("awq", "torch_awq", "gemm", "cpu", 128, False, False),
                        (type("AwqMarlinLinear", (), {}), 0.0))
    with pytest.raises(RuntimeError, match="selected AwqMarlinLinear for backend 'torch_awq'"):
        fmt.open(ckpt, torch.device("cpu"))


@needs_gptqmodel
def test_gptqmodel_cuda_backends_are_stated_with_gptqmodels_reason():
    reasons = {name: get_format(name).unsupported_reason(torch.device("cpu"))
               for name in ("awq-gemm-hf-gemm", "awq-gemm-hf-marlin", "awq-gemm-hf-machete", "awq-gemv-hf")}
    for name, reason in reasons.items():
        assert reason and reason.startswith("gptqmodel has no AWQ kernel for backend"), (name, reason)
    assert "CUDA" in reasons["awq-gemm-hf-marlin"]


@needs_gptqmodel
def test_a_gptqmodel_that_does_not_import_is_a_stated_state(monkeypatch):
    from quantbench.formats import gptqmodel as module

    def broken():
        raise ImportError("libpcre2-8.so.0: cannot open shared object file")
    monkeypatch.setattr(module, "import_gptqmodel", broken)
    monkeypatch.setattr(module, "_SELECTIONS", {})  # no selection cached yet
    assert get_format("awq-gemm-hf-marlin").unsupported_reason(torch.device("cpu")) == \
        "gptqmodel does not import here: ImportError: libpcre2-8.so.0: cannot open shared object file"


@needs_gptqmodel
def test_gptqmodel_never_downloads_cutlass_and_machete_says_what_is_missing(monkeypatch, tmp_path):
    import os

    from gptqmodel.utils import importer, machete

    from quantbench.formats import gptqmodel as module
    facts = module.import_gptqmodel()
    assert os.environ["GPTQMODEL_OFFLINE"] == facts["gptqmodel_offline"] == "1"
    # gptqmodel's own CUTLASS lookup, as quantbench leaves it: an empty cache is an error, not a download.
    monkeypatch.setenv("GPTQMODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GPTQMODEL_CUTLASS_DIR", raising=False)
    monkeypatch.setattr(machete.urllib.request, "urlopen", lambda *a, **k: pytest.fail("gptqmodel tried to download"))
    with pytest.raises(RuntimeError) as missing:
        machete._ensure_cutlass_source()
    # On CUDA that error reaches the selection inside gptqmodel's build-failure line (gptqmodel/utils/cpp.py).
    built = f"Machete: failed to build torch.ops JIT extension: {missing.value} | build_root=/x"

    def select(**kwargs):
        raise ImportError(built)
    monkeypatch.setattr(importer, "hf_select_quant_linear_v2", select)
    monkeypatch.setattr(module, "_SELECTIONS", {})
    reason = get_format("awq-gemm-hf-machete").unsupported_reason(torch.device("cuda"))
    assert reason.startswith("gptqmodel has no AWQ kernel for backend 'machete' (gemm checkpoint) on cuda: its CUDA "
                             "extension is built from CUTLASS v4.7.1 source, which is not on this machine"), reason
    assert "Fix: set GPTQMODEL_CUTLASS_DIR to a CUTLASS v4.7.1 source checkout" in reason


def test_checkpoint_kinds_map_to_every_registered_format_that_runs_them():
    from quantbench.formats.checkpoints import formats_for_kind
    assert set(formats_for_kind("awq-gemv")) == {"awq-gemv", "awq-gemv-hf"}
    assert "awq-gemm-hf-marlin" in formats_for_kind("awq-gemm") and "bf16" in formats_for_kind("dense")


TIED_RTN_SPEC = """
name = "tied-qwen2"
architecture = "qwen2"
hidden_size = 256
intermediate_size = 768
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
vocab_size = 1024
max_position_embeddings = 4096
tie_word_embeddings = true
seed = 0
awq_method = "rtn"
source = "test: the qwen2.5-3b traits in small (tied embeddings, q/k/v bias, GQA, RTN fast path)"
"""


def test_tied_embeddings_and_the_rtn_fast_path_load_and_pass_the_guard(tmp_path, monkeypatch):
    """Seen on the first GPU run: a tied-embedding model's AWQ checkpoint lost its embedding name on
    save, and every AWQ case failed to load. Both the builder and the loader handle it now."""
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "tied-qwen2.toml"
    spec.write_text(TIED_RTN_SPEC)
    pool = ModelPool(torch.device("cpu"))
    for name in ("awq-gemm", "ct-w4a16"):
        prepared = pool.get(ModelSource.from_spec(str(spec)), name)
        guard = prepared.guard
        assert guard.passed, guard.message()
        assert guard.compared == "hidden state after layer 2"
        assert guard.cosine_vs_fakequant is not None and guard.cosine_vs_fakequant > 0.9999  # exact on CPU
    pool.release()


def test_a_w8a8_checkpoint_is_told_from_w8a16_by_its_activation_scheme(tiny_checkpoints):
    from quantbench.formats.checkpoints import checkpoint_dir, detect_checkpoint
    from quantbench.specs import load_spec
    tiny = load_spec("tiny")
    w8a8 = detect_checkpoint(checkpoint_dir(tiny, "ct-w8a8"))
    assert (w8a8.kind, w8a8.formats, w8a8.quant_method) == ("ct-w8a8", ("ct-w8a8",), "compressed-tensors")
    assert detect_checkpoint(checkpoint_dir(tiny, "ct-w8a16")).kind == "ct-w8a16"
    assert get_format("ct-w8a8").bits == 8
    assert get_format("ct-w8a8").display_order == list(FORMATS).index("ct-w8a8")  # its registry position
