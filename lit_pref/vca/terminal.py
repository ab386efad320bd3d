"""The terminal front end of ``python -m lit_pref interact --terminal true`` on a
:class:`~lit_pref.vca.studio.Studio`."""

from __future__ import annotations

from typing import TextIO

from lit_pref.formats.dialogues import Dialogue
from lit_pref.vca.studio import Studio, is_unicode

__all__ = ["run_terminal"]


def _ask(question: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """Prints ``question`` and reads one line (stripped); None at the end of input. A line that is not valid
    UTF-8 (it would make the dialogue unsavable) is refused and asked again."""
    while True:
        stdout.write(question)
        stdout.flush()
        line = stdin.readline()
        if is_unicode(line):
            return None if not line else line.strip()
        stdout.write("  that line is not valid UTF-8 text; please type it again\n")


def run_terminal(studio: Studio, stdin: TextIO, stdout: TextIO) -> list[Dialogue]:
    """The tool without a browser: prompts, choices and feedback from ``stdin``; images written as PNG files.

    Per session: a prompt (an empty line or the end of input quits); then per round the image files are listed and
    it asks for the number of the chosen image (1..K; ``finish`` saves without choosing), the feedback, an optional
    satisfaction in ``[0, 1]``, and shows the refined next prompt (Enter accepts it, any text replaces it,
    ``finish`` saves the session). The end of input saves the session in progress. Returns the saved dialogues.
    """
    saved = []
    while True:
        prompt = _ask("\nprompt (empty to quit)> ", stdin, stdout)
        if not prompt:
            return saved
        session, _ = studio.start(prompt)
        finished = False
        while not finished:
            names = session.pending[1]
            stdout.write(f"round {session.round}: {session.pending[0]}\n")
            for k, name in enumerate(names, start=1):
                stdout.write(f"  image {k}: {studio.output.parent / name}\n")
            chosen = None
            while chosen is None:
                answer = _ask(f"choose an image 1..{len(names)} (or 'finish')> ", stdin, stdout)
                if answer is None or answer == "finish":
                    break
                if answer.isdigit() and 1 <= int(answer) <= len(names):
                    chosen = int(answer) - 1
                else:
                    stdout.write(f"  please type a number from 1 to {len(names)}\n")
            if chosen is None:
                saved.append(studio.finish(session.dialogue_id))
                break
            feedback = _ask("feedback> ", stdin, stdout) or ""
            satisfaction = None
            while True:
                answer = _ask("satisfaction 0..1 (Enter to skip)> ", stdin, stdout)
                if not answer:
                    break
                try:
                    satisfaction = float(answer)
                    if 0.0 <= satisfaction <= 1.0:
                        break
                except ValueError:
                    pass
                satisfaction = None
                stdout.write("  please type a number from 0 to 1, or press Enter\n")
            if studio.adapter is not None:
                stdout.write("adapting the model to your choice...\n")
            _, next_prompt = studio.choose(session.dialogue_id, chosen, feedback, satisfaction)
            if studio.adapter is not None and studio.last_adaptation is not None:
                stdout.write(f"adapted: {studio.last_adaptation.updates} updates in {studio.last_adaptation.seconds:.1f} s "
                             f"({studio.adapter.total_updates} this session)\n")
            stdout.write(f"next prompt: {next_prompt}\n")
            answer = _ask("Enter to generate it, type another prompt, or 'finish'> ", stdin, stdout)
            if answer is None or answer == "finish":
                saved.append(studio.finish(session.dialogue_id))
                finished = True
            else:
                studio.next_round(session.dialogue_id, answer or next_prompt)
        stdout.write(f"saved dialogue {saved[-1].dialogue_id} ({len(saved[-1].turns)} rounds) to {studio.output}\n")
