"""Make a GPTQ checkpoint the way a user would, with gptqmodel's own API and no quantbench code: a small
random Llama (its own shape, not a quantbench spec), saved dense, quantized by GPTQModel with act order
(desc_act) and group size 64 on fixed random token sequences, saved with GPTQModel's save. Then
benchmark it by path:

    python tools/user_gptq_checkpoint.py /tmp/user-gptq
    quantbench inspect /tmp/user-gptq
    pytest benchmarks/test_generation.py --model-dir /tmp/user-gptq --qb-runtimes transformers,vllm
"""

import os
import sys
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# gptqmodel's CPU pool needs 2 workers for its loader; its default is half the cores (1 on 2 cores)
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("GPTQMODEL_OFFLINE", "1")


def tokenizer(vocab_size: int):
    """The user's tokenizer: here a word-level one over 'w<i>' words (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def main(out: str) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig
    torch.manual_seed(11)
    config = LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=2048, max_position_embeddings=1024, torch_dtype="float16")
    with tempfile.TemporaryDirectory() as dense:
        LlamaForCausalLM(config).to(torch.float16).save_pretrained(dense)
        tokenizer(config.vocab_size).save_pretrained(dense)  # gptqmodel loads the model's tokenizer
        gen = torch.Generator().manual_seed(0)
        calibration = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                       for ids in torch.randint(0, 2048, (32, 1, 64), generator=gen)]
        model = GPTQModel.load(dense, QuantizeConfig(bits=4, group_size=64, desc_act=True, sym=True,
                                                     offload_to_disk=False), device="cpu")
        model.quantize(calibration, batch_size=4)
        model.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "user-gptq")
