"""Make a compressed-tensors int8 W8A8 checkpoint the way a user would, with compressed-tensors' own API
and no quantbench code: a small random Llama (its own shape, not a quantbench spec), the W8A8 preset
(int8 channel weights, dynamic per-token int8 activations), round-to-nearest min-max scales from
compressed-tensors' calculate_qparams, ModelCompressor, save_pretrained. Then benchmark it by path:

    python tools/user_w8a8_checkpoint.py /tmp/user-w8a8
    pytest benchmarks/test_generation.py --model-dir /tmp/user-w8a8 --qb-runtimes transformers,vllm
"""

import sys

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
from compressed_tensors.quantization.utils import calculate_qparams
from transformers import LlamaConfig, LlamaForCausalLM


def main(out: str) -> None:
    torch.manual_seed(7)
    config = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024, torch_dtype="float16")
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(
        "W8A8", ["Linear"])}, ignore=["lm_head"]))
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight.data.float()
        scale, zero = calculate_qparams(weight.amin(1, keepdim=True), weight.amax(1, keepdim=True), scheme.weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "user-w8a8")
