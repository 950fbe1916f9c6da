"""Model shape specs (fixtures/models/*.toml) -> frozen dataclasses and transformers configs."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from .errors import QuantbenchError

SPEC_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "models"
ARCHITECTURES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    seed: int = 0
    awq_method: str = "rtn"  # "calibrate" runs AutoAWQ's quantize(); "rtn" packs round-to-nearest
    source: str = ""

    def __post_init__(self):
        # TOML carries the types, so a quoted "256" or a negative size is the user's typo: say so here,
        # not as a torch error about a negative tensor dimension minutes into a build
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be a positive number, got {self.rope_theta!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise TypeError(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.awq_method not in ("calibrate", "rtn"):
            raise ValueError("awq_method must be 'calibrate' or 'rtn'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(K, N) = (in_features, out_features) of each projection in one decoder layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def parameter_count(self) -> int:
        per_layer = sum(k * n for k, n in self.linear_shapes().values()) + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embed + self.hidden_size

    def to_hf_config(self):
        import transformers

        cls = {
            "llama": transformers.LlamaConfig,
            "qwen2": transformers.Qwen2Config,
            "mistral": transformers.MistralConfig,
        }[self.architecture]
        kwargs = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=2,
            eos_token_id=1,
            pad_token_id=3,
        )
        if self.architecture == "mistral":
            kwargs["sliding_window"] = None
        config = cls(**kwargs)
        # transformers 5 moved rope_theta into rope_parameters; set whichever this version reads.
        if getattr(config, "rope_parameters", None) is not None:
            config.rope_parameters["rope_theta"] = self.rope_theta
        else:
            config.rope_theta = self.rope_theta
        return config


def spec_path(name: str, spec_dir: Path = SPEC_DIR) -> Path:
    return spec_dir / f"{name}.toml"


def available_specs(spec_dir: Path = SPEC_DIR) -> list[str]:
    return sorted(p.stem for p in spec_dir.glob("*.toml"))


def load_spec(name_or_path: str, spec_dir: Path = SPEC_DIR) -> ModelSpec:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = spec_path(name_or_path, spec_dir)
    if not path.is_file():
        raise QuantbenchError(path, "no such model spec",
                              f"use one of {', '.join(available_specs(spec_dir))} or pass a .toml path")
    try:
        data = tomllib.loads(path.read_text())
        known = {f.name: f for f in fields(ModelSpec)}
        unknown = sorted(set(data) - set(known))
        missing = [name for name, f in known.items() if name not in data and f.default is MISSING]
        if unknown or missing:
            raise ValueError("; ".join(
                ([f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else [])
                + ([f"missing key(s) {', '.join(map(repr, missing))}"] if missing else [])))
        return ModelSpec(**data)
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise QuantbenchError(path, f"invalid model spec ({exc})",
                              "compare it with fixtures/models/tiny.toml") from None
