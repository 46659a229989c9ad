"""Models: the tiny Llama with a character tokenizer (offline profile), hub models, 4-bit loading and LoRA.

The tiny model is a real ``LlamaForCausalLM`` built from ``LlamaConfig`` and saved in Hugging Face format, so
RL and evaluation load it with the same ``from_pretrained`` / PEFT code path as a hub model.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .config import ModelConfig

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, in Hugging Face format (``AutoTokenizer`` loads it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="left",
    )


def build_tiny(cfg: ModelConfig, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised small Llama (about 0.9 M parameters with the tiny defaults)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def set_threads(cfg: ModelConfig) -> None:
    torch.set_num_threads(cfg.num_threads)


def load_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str | Path, cfg: ModelConfig):
    """Load a causal LM from a local directory or hub id; 4-bit nf4 (double quantization) when configured.

    The LM head is never quantized (bitsandbytes skips ``lm_head``), so token statistics read it in full
    precision.
    """
    dtype = getattr(torch, cfg.compute_dtype)
    kwargs: dict = {"dtype": dtype}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.config.use_cache = True
    return model


def add_lora(model, cfg: ModelConfig, seed: int = 0):
    """Wrap ``model`` in a fresh PEFT LoRA adapter; only the adapter is trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(seed)
    lcfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def load_policy(base_dir: str | Path, cfg: ModelConfig, adapter_dir: str | Path | None = None, seed: int = 0):
    """The policy used by RL and evaluation: the base model plus a LoRA adapter (fresh, or loaded)."""
    base = load_base(base_dir, cfg)
    if adapter_dir is None:
        return add_lora(base, cfg, seed)
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir))


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_adapter(policy, path: str | Path) -> Path:
    """Save the LoRA adapter atomically in PEFT format, with a byte-stable ``adapter_config.json``
    (PEFT keeps ``target_modules`` as a set, whose order changes from process to process)."""
    import json

    from .notebooks import atomic_dir

    with atomic_dir(path) as tmp:
        policy.save_pretrained(tmp)
        cfg_path = Path(tmp) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return Path(path)
