"""Tiny PRM checkpoints in the released file layouts, and a reference forward in plain torch.

A checkpoint here is written the way the public ones are on disk, without rpp's loader
classes: config.json with the released keys (``architectures``, ``auto_map``,
``torch_dtype`` bfloat16, ...), the weights under their released names in two
bfloat16 safetensors shards with a ``model.safetensors.index.json``, and a tokenizer
carrying the released special tokens and chat template.

``reference_hidden`` is an independent Qwen2/Llama decoder (RMSNorm, rotary embeddings,
grouped-query causal attention, SwiGLU) over those same weights, one unpadded sample at a
time: the served scores are checked against it, not against transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

# The Qwen2.5 chat template without its tool-calling branch; the default system prompt is
# Qwen2.5-Math's.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nPlease reason step by step, "
    "and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The Llama 3.1 Instruct chat template without its tool-calling branch.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CORPUS = [
    "Step 1: 2 + 2 = 4. Step 2: so the answer is 4.\n\nThe answer is \\boxed{4}.",
    "计算 3 × 7 = 21，所以答案是 21。\n",
    "Café crème, naïve façade, déjà vu — résumé.",
    "Let x = 5 🙂 then x² = 25 🎉 done + - + -\n\n",
    "Please reason step by step, and put your final answer within",
]

# (prompt, response): mixed lengths, Chinese, emoji, accents; steps split on blank lines.
SAMPLES = [
    ("What is 2+2?", "2 + 2 = 4"),
    ("计算 3 × 7。", "3 × 7 = 21\n\n所以答案是 21。"),
    ("Solve: x² = 25 🙂", "Take roots.\n\nx = 5 or x = -5 🎉\n\nBoth work, déjà vu."),
    ("Résumé of the naïve café problem, step by step please, with every detail written out",
     "Step 1: count cafés.\n\nStep 2: 计算 12 + 30 = 42.\n\nStep 3: answer 42 🙂.\n\nStep 4: done +."),
    ("Short", "Ok."),
]


def _bpe(special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-style: no BOS added, <|endoftext|> pads, <|im_end|> ends, <extra_0> is special."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(specials), pad_token="<|endoftext|>", eos_token="<|im_end|>",
        bos_token="<|endoftext|>", additional_special_tokens=specials[1:], chat_template=QWEN_CHAT_TEMPLATE,
    )


def llama31_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3.1-style: encode() adds <|begin_of_text|>, turns end with <|eot_id|>."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    bpe = _bpe(specials)
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bpe.token_to_id("<|begin_of_text|>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        additional_special_tokens=specials[2:], chat_template=LLAMA31_CHAT_TEMPLATE,
    )


def sentencepiece_style_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral-7B-style (Math-Shepherd): the text gets a "▁" prefix and spaces become "▁",
    encode() adds <s>, no chat template; so " ки" alone is two tokens, in text one."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split("▁", "merged_with_next")]
    )
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    corpus = CORPUS + ["Step 1: 16 - 3 = 13 eggs. ки\nStep 2: 13 * 2 = 26 ки", "+ - + - ки ки"]
    bpe.train_from_iterator(
        corpus, trainer=trainers.BpeTrainer(vocab_size=420, special_tokens=["<unk>", "<s>", "</s>"])
    )
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_dims(vocab_size: int) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab_size, rms_norm_eps=1e-6)


def qwen2_config_json(tokenizer: PreTrainedTokenizerFast, architecture: str, **extra) -> dict:
    """The keys of the released Qwen2.5-Math-PRM / Skywork config.json, at tiny sizes."""
    return {
        "architectures": [architecture], "attention_dropout": 0.0,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 512,
        "max_window_layers": 2, "model_type": "qwen2", "rope_theta": 10000.0, "sliding_window": 512,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.37.0",
        "use_cache": True, "use_sliding_window": False, **tiny_dims(len(tokenizer)), **extra,
    }


QWEN_PRM_AUTO_MAP = {
    "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
    "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
}


def llama31_config_json(tokenizer: PreTrainedTokenizerFast) -> dict:
    """The keys of the released Llama-3.1-8B(-Instruct) config.json, at tiny sizes."""
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 1024,
        "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256, "rope_type": "llama3"},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.43.3",
        "use_cache": True, **tiny_dims(len(tokenizer)),
    }


def mistral_config_json(tokenizer: PreTrainedTokenizerFast) -> dict:
    """The keys of the released Math-Shepherd (Mistral-7B) config.json, at tiny sizes."""
    return {
        "architectures": ["MistralForCausalLM"], "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 1024, "model_type": "mistral", "rope_theta": 10000.0,
        "sliding_window": 1024, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0", "use_cache": True, **tiny_dims(len(tokenizer)),
    }


def decoder_weights(config: dict, *, qkv_bias: bool, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a Qwen2/Llama decoder under the released names ``model.*``."""
    g = torch.Generator().manual_seed(seed)
    h, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim

    def rand(*shape: int, std: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    w = {"model.embed_tokens.weight": rand(config["vocab_size"], h, std=1.0),
         "model.norm.weight": 1 + rand(h, std=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": 1 + rand(h, std=0.1),
              p + "post_attention_layernorm.weight": 1 + rand(h, std=0.1),
              p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
              p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
              p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
              p + "mlp.down_proj.weight": rand(h, inter)}
        if qkv_bias:
            w |= {p + "self_attn.q_proj.bias": rand(h), p + "self_attn.k_proj.bias": rand(kv),
                  p + "self_attn.v_proj.bias": rand(kv)}
    return w


def head_weights(names_shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(*shape, generator=g) * 0.5 for name, shape in names_shapes.items()}


def write_checkpoint(
    path: Path, config: dict, weights: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerFast
) -> dict[str, torch.Tensor]:
    """Write ``config``, ``weights`` (bfloat16, 2 shards + index) and ``tokenizer`` to ``path``.

    Returns the weights as stored, in float32 (bfloat16 values are exact in float32)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    stored = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    names = sorted(stored)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: stored[k].contiguous() for k in shard}, str(path / file), metadata={"format": "pt"})
        weight_map |= {k: file for k in shard}
    total = sum(t.numel() * t.element_size() for t in stored.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    tokenizer.save_pretrained(path)
    return {k: v.float() for k, v in stored.items()}


# ----------------------------------------------------------------------------- reference forward


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _inverse_frequencies(config: dict, head_dim: int) -> torch.Tensor:
    inv = 1.0 / (config["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type") == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen <= old / low) & (wavelen >= old / high)
        inv = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv.float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def reference_hidden(weights: dict[str, torch.Tensor], config: dict, input_ids: list[int]) -> torch.Tensor:
    """The final (normed) hidden states ``[T, h]`` of one sample, in float32."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    h, eps = config["hidden_size"], config["rms_norm_eps"]
    head_dim, T = h // heads, len(input_ids)
    x = weights["model.embed_tokens.weight"][torch.tensor(input_ids)]
    angles = torch.arange(T, dtype=torch.float32)[:, None] * _inverse_frequencies(config, head_dim)[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def linear(name: str, inp: torch.Tensor) -> torch.Tensor:
        out = inp @ weights[name + ".weight"].T
        return out + weights[name + ".bias"] if name + ".bias" in weights else out

    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = _rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = linear(p + "self_attn.q_proj", a).view(T, heads, head_dim).transpose(0, 1)
        k = linear(p + "self_attn.k_proj", a).view(T, kv_heads, head_dim).transpose(0, 1)
        v = linear(p + "self_attn.v_proj", a).view(T, kv_heads, head_dim).transpose(0, 1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(head_dim)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + linear(p + "self_attn.o_proj", attn.transpose(0, 1).reshape(T, h))
        m = _rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate, up = linear(p + "mlp.gate_proj", m), linear(p + "mlp.up_proj", m)
        x = x + linear(p + "mlp.down_proj", torch.nn.functional.silu(gate) * up)
    return _rms_norm(x, weights["model.norm.weight"], eps)
