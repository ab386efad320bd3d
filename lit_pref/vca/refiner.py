"""Prompt refiners: turn (prompt, the user's feedback, the dialogue so far) into the next round's prompt.

:class:`TemplateRefiner` is the deterministic default (it appends the feedback to the prompt as a clause);
:class:`CausalLMRefiner` asks a transformers chat model, for real use. The toy world's refiner, which understands its
feedback phrases, is :class:`lit_pref.toy.ToyRefiner`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Literal, Sequence

from lit_pref.formats.dialogues import Turn

__all__ = ["CausalLMRefiner", "PromptRefiner", "TemplateRefiner"]


class PromptRefiner(ABC):
    """Turns the current prompt and the user's feedback on its images into the next round's prompt."""

    @abstractmethod
    def refine(self, prompt: str, feedback: str, history: Sequence[Turn]) -> str:
        """The next prompt.

        Args:
            prompt: The prompt of the round the feedback is about (``P_t``).
            feedback: What the user wrote about that round's chosen image.
            history: The dialogue's turns so far, round 1..t (the last one is the round the feedback is about).
        """

    def feedback_phrases(self) -> list[str] | None:
        """The feedback phrases this refiner turns into prompt edits, as shown to a person (the interactive page);
        None when it takes free text."""
        return None


class TemplateRefiner(PromptRefiner):
    """Deterministic refiner (the default): appends the feedback to the prompt as a clause.

    Empty feedback keeps the prompt; any other feedback is appended as ``f"{prompt}, {feedback}"`` with surrounding
    whitespace and the feedback's final full stop removed (``"a cat" + "Make it fluffier." -> "a cat, Make it
    fluffier"``). ``history`` is not used.
    """

    def refine(self, prompt: str, feedback: str, history: Sequence[Turn] = ()) -> str:
        clause = feedback.strip().rstrip(".").strip()
        if not clause:
            return prompt
        return f"{prompt.strip()}, {clause}"


class CausalLMRefiner(PromptRefiner):
    """Asks a transformers causal language model (chat template, greedy decoding) for the next prompt.

    The chat is a system message (``system_prompt``) and one user message listing the earlier rounds' prompts and
    feedback, the current prompt and the new feedback, and asking for the new prompt only. The reply is cut to its
    first non-empty line, with a leading ``Prompt:`` label and surrounding quotes removed. An empty reply falls back
    to :class:`TemplateRefiner` (so a session never stalls on a blank prompt).

    Args:
        model: A local folder or a hub id of a causal LM whose tokenizer has a chat template.
        max_new_tokens: Length limit of the reply.
        system_prompt: The system message.
        device: Device of the model (e.g. ``"cpu"``, ``"cuda"``).
        dtype: Weight dtype (``"auto"``: as stored).
    """

    DEFAULT_SYSTEM_PROMPT = (
        "You rewrite prompts for a text-to-image model. Given the current prompt and the user's feedback on the "
        "image it produced, write the improved prompt. Keep everything the user did not ask to change. "
        "Reply with the new prompt only, on one line."
    )

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 64,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        device: str = "cpu",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{model}: the tokenizer has no chat template; CausalLMRefiner needs a chat model")
        weights = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=weights).to(device).eval()
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self._fallback = TemplateRefiner()

    def messages(self, prompt: str, feedback: str, history: Sequence[Turn]) -> list[dict[str, str]]:
        """The chat sent to the model."""
        lines = []
        for turn in history[:-1] if history else ():
            if turn.prompt is not None:
                lines.append(f"Round {turn.round} prompt: {turn.prompt}")
            lines.append(f"Round {turn.round} feedback: {turn.user_feedback}")
        earlier = ("Earlier rounds:\n" + "\n".join(lines) + "\n\n") if lines else ""
        user = f"{earlier}Current prompt: {prompt}\nFeedback: {feedback}\nNew prompt:"
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def refine(self, prompt: str, feedback: str, history: Sequence[Turn] = ()) -> str:
        reply = self.reply(self.messages(prompt, feedback, history))
        return self.clean(reply) or self._fallback.refine(prompt, feedback, history)

    def reply(self, messages: list[dict[str, str]]) -> str:
        """The model's greedy reply to a chat (``[{"role", "content"}, ...]``), special tokens removed."""
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        ids = inputs["input_ids"]
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=inputs["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @staticmethod
    def clean(reply: str) -> str:
        """The first non-empty line of ``reply`` without a ``Prompt:`` label or surrounding quotes."""
        for line in reply.splitlines():
            line = re.sub(r"^\s*(new\s+)?prompt\s*:\s*", "", line.strip(), flags=re.IGNORECASE).strip().strip("\"'`").strip()
            if line:
                return line
        return ""
