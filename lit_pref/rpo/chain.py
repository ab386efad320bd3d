"""EditorChain: each instruction goes to the editor made for its kind of problem.

A critic tags every instruction with a kind (:data:`lit_pref.rpo.critic.ISSUE_KINDS`): ``local`` (one object or part
in one place), ``composition`` (layout: positions, counts, poses) or ``global`` (style, lighting, colours,
background, quality). No single editor is best at all three: inpainting changes a region and keeps the rest exactly,
a ControlNet regenerates everything under the original's structure, an instruction editor or SDEdit can move
things. A typical chain::

    editor:
      class_path: lit_pref.rpo.EditorChain
      init_args:
        editors:
          local: {class_path: lit_pref.rpo.InpaintEditor}                 # the regions the critic grounded
          global: {class_path: lit_pref.rpo.ControlNetEditor, init_args: {controlnet: lllyasviel/sd-controlnet-canny}}
        default: {class_path: lit_pref.rpo.InstructPix2PixEditor}          # composition, and untagged instructions
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lit_pref.rpo.critic import ISSUE_KINDS, Critique
from lit_pref.rpo.editor import Edit, Editor

if TYPE_CHECKING:
    from lit_pref.backbone import DiffusionBackbone


class EditorChain(Editor):
    """Routes instructions to editors by kind and applies the editors one after the other.

    The instructions of each kind in ``editors`` go, in their order in the critique, to that kind's editor; the
    editors run in the order the kinds are listed, each on the previous one's output, then ``default`` on the
    instructions no listed kind took (a critique without kinds counts every instruction ``global``). Instructions
    left without an editor are not carried out. The chain's mask is the union of its editors' masks, ``None`` (any
    pixel may have changed) as soon as one editor reports none; all zeros when no editor ran.

    Args:
        editors: Kind (``local``, ``composition`` or ``global``) -> the editor of its instructions.
        default: The editor of the instructions whose kind has no entry in ``editors``; ``None``: they are skipped.
    """

    def __init__(self, editors: dict[str, Editor], default: Editor | None = None) -> None:
        unknown = sorted(set(editors) - set(ISSUE_KINDS))
        if unknown:
            raise ValueError(f"EditorChain.editors: unknown kind(s) {unknown}; expected some of {ISSUE_KINDS}")
        if not editors and default is None:
            raise ValueError("EditorChain needs at least one editor")
        self._editors = dict(editors)
        self._default = default
        self.routes = {kind: type(editor).__name__ for kind, editor in editors.items()}  # recorded in parameters
        self.default = None if default is None else type(default).__name__

    def attach(self, backbone: DiffusionBackbone) -> None:
        for editor in self.stages():
            editor.attach(backbone)

    def stages(self) -> list[Editor]:
        """The editors in the order they run."""
        return list(self._editors.values()) + ([self._default] if self._default is not None else [])

    def route(self, critique: Critique) -> list[tuple[Editor, list[int]]]:
        """Each editor that has instructions, in running order, with the indices of its instructions."""
        kinds = [critique.kind(k) for k in range(len(critique.instructions))]
        plan = [(editor, [k for k, kind in enumerate(kinds) if kind == wanted])
                for wanted, editor in self._editors.items()]
        if self._default is not None:
            plan.append((self._default, [k for k, kind in enumerate(kinds) if kind not in self._editors]))
        return [(editor, indices) for editor, indices in plan if indices]

    def apply(self, image: Tensor, critique: Critique, prompt: str, seed: int | None = None) -> Edit:
        current = image.float().cpu()
        mask: Tensor | None = torch.zeros(1, *image.shape[-2:])
        for editor, indices in self.route(critique):
            edit = editor.apply(current, critique.subset(indices), prompt, seed)
            current = edit.image.float().cpu()
            mask = None if mask is None or edit.mask is None else torch.maximum(mask, edit.mask.float().cpu())
        return Edit(current, mask)

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        return self.apply(image, Critique(text="", instructions=list(instructions)), prompt, seed).image
