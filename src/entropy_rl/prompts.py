"""Prompt templates of the papers: the ``\\boxed{}`` instruction, through the tokenizer's chat template when it has one.

:data:`TEMPLATES` (``rl.template``, ``eval.template``) maps a name to ``fn(problem, tokenizer) -> str``.
"""
from __future__ import annotations

from .config import TEMPLATES as DECLARED_TEMPLATES
from .registry import Registry, registry

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""The instruction used by DeepSeekMath, Qwen2.5-Math, SimpleRL, Dr. GRPO, DAPO evaluations and others."""

TEMPLATES: Registry = registry("prompt template", DECLARED_TEMPLATES, "entropy_rl.config.TEMPLATES")


def _chat(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def prompt_boxed(problem: str, tokenizer=None) -> str:
    """User turn ``"<problem>\\n<boxed instruction>"``, in the chat template when the tokenizer has one
    (Qwen2.5-Math-Instruct, DeepSeek-R1 distills, ...); else that text followed by a newline."""
    text = f"{problem}\n{BOXED_INSTRUCTION}"
    return _chat(tokenizer, [{"role": "user", "content": text}]) if _has_chat_template(tokenizer) else text + "\n"


def prompt_qwen_math(problem: str, tokenizer=None) -> str:
    """The instruction as the system turn and the problem as the user turn: Qwen2.5-Math's evaluation prompt,
    the ``qwen_math`` template of Dr. GRPO (understand-r1-zero). Without a chat template, as ``boxed``."""
    if not _has_chat_template(tokenizer):
        return prompt_boxed(problem, None)
    return _chat(tokenizer, [{"role": "system", "content": BOXED_INSTRUCTION}, {"role": "user", "content": problem}])


def prompt_plain(problem: str, tokenizer=None) -> str:
    """The problem text as is (the synthetic task, whose model was trained on bare ``a+b=`` prompts)."""
    return problem


TEMPLATES.register("boxed", prompt_boxed)
TEMPLATES.register("qwen_math", prompt_qwen_math)
TEMPLATES.register("plain", prompt_plain)


def build_prompt(problem: str, tokenizer=None, template: str = "boxed") -> str:
    return TEMPLATES.get(template)(problem, tokenizer)
