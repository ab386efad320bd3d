"""``python -m lit_pref <subcommand> ...`` (also installed as ``lit-pref``).

``fit``, ``validate``, ``test`` and ``predict`` go to LightningCLI; the other subcommands are listed in
``SUBCOMMANDS``, each the ``main(argv)`` of its own module.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module whose ``main(argv: list[str]) -> None`` runs it
SUBCOMMANDS: dict[str, str] = {
    "compare": "lit_pref.compare",
    "synthesize-pairs": "lit_pref.rpo.cli",
    "interact": "lit_pref.vca.interact",
    "dialogues-to-pairs": "datamodules.dialogue_pairs",
}


def main(argv: list[str] | None = None) -> None:
    """Entry point: an extra subcommand of ``SUBCOMMANDS``, else LightningCLI."""
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[words[0]]).main(words[1:])
        return
    from lit_pref.cli import LitPrefCLI

    LitPrefCLI(args=argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
