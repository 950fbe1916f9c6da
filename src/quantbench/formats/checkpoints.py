"""Synthetic checkpoints built from shape specs (cached, deterministic) and user checkpoints by path.

Nothing is downloaded: weights are random from the spec's seed, the tokenizer is a word-level
vocabulary built here, and calibration text is generated from a seeded RNG.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..environment import stack_versions
from ..errors import BadCheckpoint, QuantbenchError, Unsupported, first_line
from ..paths import REPO_ROOT
from ..specs import ModelSpec, load_spec

BUILDER_VERSION = 2  # bump when a builder's output changes, so caches rebuild
REFERENCE_FILE = "quantbench_reference.pt"
FAKEQUANT_FILE = "quantbench_fakequant.pt"
SPECIAL_TOKENS = {"[UNK]": 0, "t_eos": 1, "t_bos": 2, "t_pad": 3}


def cache_root() -> Path:
    return Path(os.environ.get("QUANTBENCH_CACHE", REPO_ROOT / ".cache" / "quantbench"))


# ----------------------------------------------------------------------------- local inputs
def build_tokenizer(vocab_size: int):
    """A word-level tokenizer over 't<i>' words: real tokenizer files, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIAL_TOKENS)
    vocab.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="t_eos",
                                   bos_token="t_bos", pad_token="t_pad")


def calibration_texts(vocab_size: int, samples: int = 64, words: int = 48, seed: int = 0) -> list[str]:
    """Zipf-like word streams (frequent words recur, as in text), enough tokens for AWQ's blocks."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab_size - len(SPECIAL_TOKENS) + 1, dtype=torch.float64)
    weights = 1.0 / ranks
    draws = torch.multinomial(weights, samples * words, replacement=True, generator=gen)
    draws = (draws + len(SPECIAL_TOKENS)).view(samples, words)
    return [" ".join(f"t{int(i)}" for i in row) for row in draws]


def reference_ids(vocab_size: int) -> torch.Tensor:
    """The fixed prompt of the correctness guard (2 x 32 tokens)."""
    gen = torch.Generator().manual_seed(123)
    return torch.randint(len(SPECIAL_TOKENS), min(vocab_size, 32000), (2, 32), generator=gen)


# ----------------------------------------------------------------------------- cache keys
def checkpoint_key(spec: ModelSpec, kind: str) -> str:
    from .base import BUILDER_LIBRARIES
    versions = stack_versions()
    libs = ["transformers", *BUILDER_LIBRARIES.get(kind, ())]
    payload = json.dumps({"spec": spec.digest(), "kind": kind, "builder": BUILDER_VERSION,
                          "libs": {lib: versions.get(lib) for lib in libs}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def checkpoint_dir(spec: ModelSpec, kind: str) -> Path:
    return cache_root() / spec.name / f"{kind}-{checkpoint_key(spec, kind)}"


def is_built(path: Path) -> bool:
    return (path / ".complete").is_file()


class BuildingElsewhere(Exception):
    """Another process holds this checkpoint's build (``ensure_checkpoint(..., wait=False)``)."""


def _build_into(final: Path, build, force: bool = False, wait: bool = True) -> dict:
    """Build in a temp folder beside ``final`` and rename: a crash never leaves a half checkpoint. One build of a
    checkpoint at a time across processes (side-by-side benchmark runs, parallel test workers): a process that
    finds another building it waits for that build and takes it instead of building its own copy, or with
    ``wait=False`` raises BuildingElsewhere at once."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        try:  # released when the file closes, or by the kernel when the process dies
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BuildingElsewhere(final.name) from None
        if is_built(final) and not force:
            return json.loads((final / ".complete").read_text() or "{}")
        return _build_unlocked(final, build, force)


def _build_unlocked(final: Path, build, force: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        facts = build(tmp) or {}
        (tmp / ".complete").write_text(json.dumps(facts, default=str))
        if final.exists() and (force or not is_built(final)):
            shutil.rmtree(final)  # asked to rebuild, or an incomplete leftover (a finished build has its marker)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_built(final):
                raise
            # Another process (a side-by-side benchmark run) finished the same build meanwhile and may be
            # reading it: keep its copy (same spec, seed and key, so the same checkpoint) and drop ours.
            return json.loads((final / ".complete").read_text() or "{}")
        return facts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_dense(spec: ModelSpec, out: Path, device: torch.device) -> dict:
    """Random fp16 weights from the spec's seed, safetensors + config + tokenizer + fp32 reference."""
    from transformers import AutoModelForCausalLM

    from .base import dtype_kwargs
    from .reference import guard_outputs

    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(spec.to_hf_config(), **dtype_kwargs(torch.float32))
    model.eval()
    ids = reference_ids(spec.vocab_size)
    ref = guard_outputs(model, ids.to(device))  # fp32 reference, before rounding to fp16
    model.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    build_tokenizer(spec.vocab_size).save_pretrained(str(out))
    torch.save({"ids": ids, **ref}, out / REFERENCE_FILE)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def ensure_checkpoint(spec: ModelSpec, kind: str, device: torch.device | str = "cpu",
                      force: bool = False, wait: bool = True) -> Path:
    """Path of the built checkpoint of this kind for the spec, building it (and the dense base) if needed.
    ``wait=False``: BuildingElsewhere when another process is building this kind (never for the dense base)."""
    from .base import BUILDERS

    device = torch.device(device)
    dense = checkpoint_dir(spec, "dense")
    if force or not is_built(dense):
        _build_into(dense, lambda tmp: build_dense(spec, tmp, device), force)
    if kind == "dense":
        return dense
    if kind not in BUILDERS:
        raise QuantbenchError(None, f"no builder for checkpoint kind {kind!r}",
                              f"use one of: dense, {', '.join(BUILDERS)}")
    out = checkpoint_dir(spec, kind)
    if force or not is_built(out):
        reference = torch.load(dense / REFERENCE_FILE)
        texts = calibration_texts(spec.vocab_size, seed=spec.seed)
        try:
            _build_into(out, lambda tmp: BUILDERS[kind](spec, dense, tmp, device, reference, texts), force, wait)
        except (QuantbenchError, Unsupported, BuildingElsewhere, torch.cuda.OutOfMemoryError, MemoryError):
            raise
        except Exception as exc:  # a library that fails inside its own quantizer
            # stated once, in the library's words, and cached by the pool: never rebuilt for every case
            raise Unsupported(f"building the {kind} checkpoint of {spec.name} on {device.type} failed in "
                              f"{type(exc).__name__}: {first_line(exc)}") from exc
    return out


def build_fixtures(model: str, format_names: list[str], device: torch.device | str = "cpu",
                   force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Materialize every checkpoint kind the formats need; returns {kind: path}. A kind whose library
    cannot build it here (not installed, no kernel for this device) is left out, its reason in
    ``unbuildable`` below: its formats' cases say the same reason when they run."""
    from tqdm import tqdm

    from .base import get_format

    spec = load_spec(model)
    kinds = ["dense"] + sorted({get_format(f).checkpoint for f in format_names} - {"dense"})
    built = {}
    UNBUILDABLE.clear()
    bar = tqdm(total=len(kinds), desc=f"fixtures {spec.name}", disable=not progress, unit="ckpt")
    # Processes that need the same checkpoints share the work: a kind another process is building is left for later
    # (a second pass waits for it), so two parallel test workers build half each instead of one waiting for all.
    for wait in (False, True):
        for kind in [kind for kind in kinds if kind not in built and kind not in UNBUILDABLE]:
            try:
                built[kind] = ensure_checkpoint(spec, kind, device, force=force, wait=wait)
            except BuildingElsewhere:
                continue
            except Unsupported as exc:
                UNBUILDABLE[kind] = str(exc)
            bar.update()
    bar.close()
    return {kind: built[kind] for kind in kinds if kind in built}


# kind -> why the last build_fixtures could not build it here
UNBUILDABLE: dict[str, str] = {}


# ----------------------------------------------------------------------------- user checkpoints
@dataclass(frozen=True)
class DetectedCheckpoint:
    path: Path
    kind: str                  # checkpoint kind, as the builders name them
    formats: tuple[str, ...]   # formats that can run it
    quant_method: str | None
    own_code: str | None = None  # what config.json's auto_map names, never run (see own_code_notice)


def formats_for_kind(kind: str) -> tuple[str, ...]:
    """The registered formats that run a checkpoint kind, in registry order."""
    from .base import FORMATS
    return tuple(name for name, fmt in FORMATS.items() if fmt.checkpoint == kind)


def own_code_notice(config_path: Path, config: dict) -> str | None:
    """T15: a config.json whose auto_map names the checkpoint's own modeling code (with or without
    trust_remote_code). quantbench never runs a checkpoint's code: transformers' own class for its model_type is
    what is loaded and timed, which is another model where the custom code differs. Said, never silent."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return None
    named = None
    if isinstance(auto_map, dict):
        named = auto_map.get("AutoModelForCausalLM", next(iter(auto_map.values()), None))
    stock = ", ".join(config.get("architectures") or []) or f"the class of model_type {config.get('model_type')!r}"
    return (f"{config_path}: auto_map names the checkpoint's own code ({named}); quantbench never runs a "
            f"checkpoint's code and times transformers' stock {stock} instead. Fix: benchmark an architecture "
            "transformers ships, or drop auto_map where the stock class is the same model")


# Bytes per element of safetensors' dtypes (the sub-byte and exotic ones are not checked)
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


def validate_safetensors(path: Path) -> None:
    """Header and size checks: a truncated file is named here, not deep inside a loader."""
    size = path.stat().st_size
    fix = "re-copy or re-download the file; it is incomplete or not safetensors"
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadCheckpoint(path, "truncated safetensors file (no header)", fix)
        header_len = struct.unpack("<Q", head)[0]
        if header_len > size - 8:
            raise BadCheckpoint(path, "truncated safetensors file (header runs past the end)", fix)
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadCheckpoint(path, "corrupt safetensors header", fix) from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
    if tensors is None or not all(isinstance(v, dict) and len(v.get("data_offsets") or ()) == 2
                                  for v in tensors.values()):
        raise BadCheckpoint(path, "corrupt safetensors header (a tensor entry without its data offsets)", fix)
    for name, entry in tensors.items():  # T17: shapes that disagree with the bytes their offsets hold
        width = _DTYPE_BYTES.get(entry.get("dtype"))
        begin, stop = (int(x) for x in entry["data_offsets"])
        if width is not None and math.prod(entry.get("shape") or []) * width != stop - begin:
            raise BadCheckpoint(path, f"tensor {name!r}: shape {entry.get('shape')} of {entry.get('dtype')} needs "
                                f"{math.prod(entry.get('shape') or []) * width} bytes, its offsets hold "
                                f"{stop - begin}", "re-save the checkpoint; its header does not match its data")
    end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    if 8 + header_len + end > size:
        raise BadCheckpoint(path, f"truncated safetensors file ({size} bytes, header says "
                            f"{8 + header_len + end})", fix)


def detect_checkpoint(path: str | Path) -> DetectedCheckpoint:
    """Read config.json's quantization_config and say which formats can run this directory."""
    path = Path(path)
    config_path = path / "config.json"
    if not path.is_dir():
        raise BadCheckpoint(path, "not a directory", "pass the folder that holds config.json and *.safetensors")
    if not config_path.is_file():
        raise BadCheckpoint(config_path, "missing config.json",
                            "pass a transformers checkpoint folder (config.json + *.safetensors)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise BadCheckpoint(config_path, f"config.json is not valid JSON ({exc.msg}, line {exc.lineno})",
                            "repair or regenerate config.json") from None
    if not isinstance(config, dict):  # T18: a JSON list or string
        raise BadCheckpoint(config_path, f"config.json holds a JSON {type(config).__name__}, not an object of the "
                            "model's settings", "regenerate it with the model's save_pretrained()")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise BadCheckpoint(path, "no *.safetensors weights (quantbench loads safetensors only)",
                            "convert the weights with save_pretrained(safe_serialization=True)")
    for shard in shards:
        validate_safetensors(shard)
    own_code = own_code_notice(config_path, config)
    qc = config.get("quantization_config")
    if qc and not isinstance(qc, dict):
        raise BadCheckpoint(config_path, f"quantization_config is a {type(qc).__name__}, not an object",
                            "regenerate config.json with the quantizer that wrote the checkpoint")
    if not qc:
        return DetectedCheckpoint(path, "dense", formats_for_kind("dense"), None, own_code)
    method = str(qc.get("quant_method", "")).lower()
    from .base import DETECTORS
    if method not in DETECTORS:
        raise BadCheckpoint(config_path, f"unknown quant_method {qc.get('quant_method')!r}",
                            f"quantbench detects {' and '.join(map(repr, DETECTORS))} (or none for dense)")
    kind = DETECTORS[method](config_path, qc)
    return DetectedCheckpoint(path, kind, formats_for_kind(kind), method, own_code)
