"""Models: the tiny Llama with a character tokenizer (offline profile), hub models, 4-bit loading and LoRA.

The tiny model is a real ``LlamaForCausalLM`` built from ``LlamaConfig`` and saved in Hugging Face format, so
RL and evaluation load it with the same ``from_pretrained`` / PEFT code path as a hub model.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .config import ModelConfig
from .io import atomic_dir

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


BASE_POINTER = "entropy_rl_base.json"
"""a starting-policy directory that holds this file names a pretrained model instead of holding its weights"""


def is_hub_id(source: str | Path) -> bool:
    """Whether ``from_pretrained(source)`` reads the hub: not ``tiny`` and not a local path."""
    return str(source) != "tiny" and not Path(source).exists()


def write_base_pointer(path: str | Path, source: str, revision: str = "") -> Path:
    """Make ``path`` a *pointer* to the pretrained model ``source`` (a hub id or a local directory): the starting
    policy of a profile that has no warm start (``sft.steps: 0``), without a multi-GB copy of its weights.

    ``revision`` (``model.revision``: a commit, tag or branch) travels with the pointer when ``source`` is a hub id,
    so that everything loading the starting policy (RL, evaluation) loads the same snapshot; a local ``source`` and
    an empty revision write ``{"source": ...}`` alone."""
    pointer = {"source": source}
    if revision and is_hub_id(source):
        pointer["revision"] = revision
    with atomic_dir(path) as tmp:
        (Path(tmp) / BASE_POINTER).write_text(json.dumps(pointer, indent=2) + "\n")
    return Path(path)


def _read_pointer(path: str | Path) -> dict | None:
    pointer = Path(path) / BASE_POINTER
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text())
    source, revision = data.get("source"), data.get("revision", "")
    if not isinstance(source, str) or not source or not isinstance(revision, str):
        raise ValueError(f"{pointer}: expected {{\"source\": \"<hub id or directory>\"}} and an optional "
                         f"{{\"revision\": \"<commit, tag or branch>\"}}")
    return {"source": source, "revision": revision}


def resolve_source(path: str | Path) -> str:
    """What ``from_pretrained`` should load for a starting-policy directory: the source a pointer names, else the
    path itself (a directory in Hugging Face format, or a hub id)."""
    pointer = _read_pointer(path)
    return pointer["source"] if pointer else str(path)


def resolve_revision(path: str | Path, cfg: ModelConfig | None = None) -> str:
    """The hub revision ``from_pretrained`` should load ``path`` at ("" = none, the default branch): a pointer's own
    revision (the snapshot its profile's SFT stage named); else ``cfg.revision`` when ``path`` is ``cfg.source``
    itself and a hub id; else none (a local directory, ``tiny``, another hub id).

    A pointer to ``cfg.source`` at another revision than ``cfg.revision`` raises: the starting policy was made with
    other settings (rerun the SFT stage) and RL or evaluation would load another snapshot than the profile names."""
    pointer = _read_pointer(path)
    if pointer is not None:
        if not is_hub_id(pointer["source"]):
            return ""
        if cfg is not None and pointer["source"] == cfg.source and pointer["revision"] != cfg.revision:
            raise ValueError(f"{Path(path) / BASE_POINTER}: names {pointer['source']} at revision "
                             f"{pointer['revision'] or '(default branch)'} but model.revision is "
                             f"{cfg.revision or '(default branch)'}; rerun the SFT stage (10_sft) to rewrite it")
        return pointer["revision"]
    if cfg is not None and str(path) == cfg.source and is_hub_id(path):
        return cfg.revision
    return ""


def _revision_kwargs(path: str | Path, cfg: ModelConfig | None) -> dict:
    revision = resolve_revision(path, cfg)
    return {"revision": revision} if revision else {}


def load_tokenizer(path: str | Path, cfg: ModelConfig | None = None):
    """The tokenizer of a starting-policy directory, a local directory or a hub id (at ``resolve_revision``)."""
    tok = AutoTokenizer.from_pretrained(resolve_source(path), **_revision_kwargs(path, cfg))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str | Path, cfg: ModelConfig):
    """Load a causal LM from a local directory, a hub id (at ``resolve_revision(path, cfg)``) or a starting-policy
    pointer; 4-bit nf4 (double quantization) when configured.

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
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # on the GPU (4-bit weights are quantized there)
    model = AutoModelForCausalLM.from_pretrained(resolve_source(path), **_revision_kwargs(path, cfg), **kwargs)
    model.config.use_cache = True
    if cfg.load_in_4bit:
        keep_cpu_4bit_trainable(model)
    return model


def keep_cpu_4bit_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns the modules changed.

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weight, the first time it runs in eval mode without grad on a CPU
    with AVX512-BF16 (inside ``generate``), into a layout served by ``gemv_4bit``, which has no backward: every
    later training pass then gets zero gradients through the base layers, silently. Its per-module switch
    ``support_avx512bf16_for_cpu`` turns the repack off (on a GPU the flag is never read)."""
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def add_lora(model, cfg: ModelConfig, seed: int = 0):
    """Wrap ``model`` in a fresh PEFT LoRA adapter; only the adapter is trainable."""
    from peft import LoraConfig, get_peft_model

    # The base is frozen and stays in its compute dtype: unlike peft's `prepare_model_for_kbit_training` we do not
    # upcast the embeddings and norms to fp32 (a bf16 residual stream halves activation memory); the token
    # statistics, log-probs and ratios are computed in fp32 all the same (token_stats).
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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


def load_checkpoint_model(base_dir: str | Path, adapter_dir: str | Path | None, cfg: ModelConfig):
    """A trained checkpoint for evaluation: the base (``load_base``) plus the PEFT adapter when given, in eval mode."""
    model = load_base(base_dir, cfg)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_adapter(policy, path: str | Path) -> Path:
    """Save the LoRA adapter atomically in PEFT format, with a byte-stable ``adapter_config.json``
    (PEFT keeps ``target_modules`` as a set, whose order changes from process to process)."""
    with atomic_dir(path) as tmp:
        policy.save_pretrained(tmp)
        cfg_path = Path(tmp) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return Path(path)
