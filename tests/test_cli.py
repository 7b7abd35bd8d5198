"""The command line itself: --version, help that explains every argument with an example, and --dry-run."""

import argparse
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from helpers import REPO, cli_env

from cll_ray.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, path=("cll-ray",)):
    """Every (sub)command parser, with its name."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*path, name))


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"cll-ray {version('cll-ray')}"


def test_every_command_has_an_example_and_every_argument_help():
    found = dict(commands(build_parser()))
    assert {"cll-ray run", "cll-ray tune", "cll-ray report", "cll-ray data synth", "cll-ray search"} <= set(found)
    for name, parser in found.items():
        assert "example:" in (parser.epilog or ""), f"{name}: no example in its help"
        assert name.split()[0] in parser.epilog.split("example:")[1], name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}: no help"


def test_methods_help_lists_every_preset(capsys):
    from cll_ray.config import method_presets

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for preset in method_presets():
        assert re.search(rf"\b{preset}\b", text), preset
    assert "--dry-run" in text and "tokenizers" in text


DRY = ["run", "--dry-run", "--quiet", "--methods", "cll_clip,mla", "--langs", "en,fr,ru", "--workers", "2",
       "run.cpus_per_worker=0.5", "data.synthxm_size=tiny", "model.language_vocab_size=600", "train.lr=5e-3"]


def test_dry_run_prints_order_growth_and_resources_and_trains_nothing(cli_home, tmp_path):
    # in a fresh process, to see that neither Ray nor a Trainer was started (nor even Ray imported)
    probe = ("import sys; from cll_ray.cli import main; code = main(sys.argv[1:]); "
             "assert 'ray' not in sys.modules, 'Ray was imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, *DRY, f"run.output_dir={tmp_path}", "run.name=dry"],
                          env=cli_env(cli_home), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert not (tmp_path / "dry").exists()  # no run directory, config or checkpoint written
    assert "task order: en -> fr -> ru" in out
    # the resolved config: shared keys once, the methods' differing keys side by side
    assert re.search(r"^\s+train\.lr\s+0\.005$", out, re.M)
    assert re.search(r"^\s+method\.kind\s+cll_clip\s+mla$", out, re.M)
    # growth per task: each task starts from the vocabulary the previous one left; English adds nothing to
    # CLIP's BPE, fr and ru add rows
    table = out.split("vocabulary growth per task:")[1].split("\n\n")[0].splitlines()[2:]
    assert [row.split()[1] for row in table] == ["en", "fr", "ru"]
    for column in (0, 1):
        steps = [re.findall(r"(\d+) -> (\d+) \(\+(\d+)\)", row)[column] for row in table]
        sizes = [(int(a), int(b), int(c)) for a, b, c in steps]
        assert all(new - old == added for old, new, added in sizes)
        assert all(sizes[i][0] == sizes[i - 1][1] for i in (1, 2))
        assert sizes[1][2] > 0 and sizes[2][2] > 0
    assert table[0].split("->")[0].split()[-1] == table[0].split("->")[1].split()[0]  # en: + 0 for cll_clip
    # resources: 2 workers x 0.5 CPU per method, side by side
    assert re.search(r"^\s+workers\s+2\s+2$", out, re.M)
    assert re.search(r"^\s+CPUs per worker\s+0\.5\s+0\.5$", out, re.M)
    assert re.search(r"^\s+total\s+1 CPU\s+1 CPU$", out, re.M)


def test_dry_run_with_resume_is_refused(capsys, tmp_path):
    assert main(["run", "--dry-run", "--resume", str(tmp_path)]) == 2
    assert "--dry-run is for a new run" in capsys.readouterr().err
