"""Make a bitsandbytes checkpoint the way a QLoRA user ships one, with transformers' BitsAndBytesConfig
and no quantbench code: a small random Llama (its own shape), saved dense, loaded with nf4 + double
quantization and bf16 compute, saved serialized (safetensors). Then benchmark it by path:

    python tools/user_bnb_checkpoint.py /tmp/user-bnb
    quantbench inspect /tmp/user-bnb
    pytest benchmarks/test_generation.py --model-dir /tmp/user-bnb
"""

import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM


def main(out: str) -> None:
    torch.manual_seed(13)
    config = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024, torch_dtype="bfloat16")
    with tempfile.TemporaryDirectory() as dense:
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(dense)
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=quantization, device_map={"": "cpu"},
                                                     dtype=torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "user-bnb")
