"""``python -m lit_pref <subcommand> --config ...`` (also installed as ``lit-pref``)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Entry point: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``."""
    from lit_pref.cli import LitPrefCLI

    LitPrefCLI(args=argv)


if __name__ == "__main__":
    main()
