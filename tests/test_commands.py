"""One CLI style: every subcommand is parsed by jsonargparse, prints ``--help`` under its own name, takes ``--config``,
and answers a bad value or class path with one line."""

from __future__ import annotations

import pytest

from conftest import REPO
from lit_pref.__main__ import SUBCOMMANDS, main
from lit_pref.commands import one_line
from lit_pref.toy import make_toy_dialogues


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.replace(" [options]", "")  # LightningCLI's usage: `python -m lit_pref [options] fit`
    assert out.startswith(f"usage: python -m lit_pref {name} ") and "__main__" not in out
    assert "--config CONFIG" in out


def test_a_subcommand_reads_its_arguments_from_config_files(tmp_path, capsys):
    """``make-toy-dialogues --config`` writes what the function writes with the same arguments; a later ``--config``
    and the command line override earlier values."""
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"path: {tmp_path / 'd.jsonl'}\nn: 5\nrounds: 2\nseed: 3\n")
    second.write_text("seed: 4\n")
    main(["make-toy-dialogues", "--config", str(first), "--config", str(second), "--n", "3"])
    assert capsys.readouterr().out.startswith("3 dialogues (")
    expected = make_toy_dialogues(tmp_path / "direct.jsonl", 3, rounds=2, seed=4)
    assert (tmp_path / "d.jsonl").read_text() == (tmp_path / "direct.jsonl").read_text()
    assert [d.dialogue_id for d in expected] == ["toy-4-0", "toy-4-1", "toy-4-2"]


def test_a_wrong_value_is_one_line_naming_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["make-toy-dialogues", "--path", str(tmp_path / "d.jsonl"), "--n", "many"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 2 and error[0].startswith("error: n: ") and "many" in error[0]
    assert error[1] == "(`python -m lit_pref make-toy-dialogues --help` lists the options)"


def test_a_wrong_class_path_is_one_line_naming_the_key_and_the_path(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--model", "no_such_pkg.Method"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 2, error
    assert error[0].startswith("error: model: cannot import class path 'no_such_pkg.Method'"), error[0]


def test_nested_errors_keep_the_dotted_key_and_the_class():
    """jsonargparse's messages (as 4.53 writes them) folded to one line."""
    nested = 'Parser key "model":\n  Problem with given class_path \'pkg.Method\':\n    Parser key "gamma":\n' \
             "      Expected a <class 'float'>. Got value: high"
    assert one_line(nested) == "model.gamma: Expected a <class 'float'>. Got value: high (in pkg.Method)"
    unknown = "Parser key \"model\":\n  Problem with given class_path 'pkg.Method':\n    Option 'gama' is not accepted"
    assert one_line(unknown) == "model: Option 'gama' is not accepted (in pkg.Method)"
    assert one_line("--host '0.0.0.0' refused") == "--host '0.0.0.0' refused"


def test_class_help_is_named_after_the_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--model.help", "DenseDiscountedDPO"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lit_pref ") and "__main__" not in out and "--model.gamma GAMMA" in out


def test_an_unknown_subcommand_is_named(capsys):
    with pytest.raises(SystemExit, match="unknown subcommand 'fitt'"):
        main(["fitt"])


def test_no_argparse_parser_is_left():
    """Every command line of the repository (subcommands, benchmarks, test helpers) is parsed by jsonargparse."""
    sources = [p for folder in ("lit_pref", "datamodules", "callbacks", "bench", "tests")
               for p in (REPO / folder).rglob("*.py")]
    offenders = [str(p.relative_to(REPO)) for p in sources
                 if any(line.startswith(("import argparse", "from argparse")) for line in p.read_text().splitlines())]
    assert len(sources) > 50 and offenders == []
