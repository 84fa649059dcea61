"""The two ways the converter tests run scripts/convert.py: as users do, and in this process (faster)."""

import subprocess
from pathlib import Path

import convert as convert_script  # scripts/convert.py (conftest puts scripts/ on sys.path)

CONVERT = Path(__file__).resolve().parents[2] / "scripts" / "convert.py"


def run(*args, check=True):
    """convert.py as users run it (it re-executes itself under a Python with torch if needed)."""
    result = subprocess.run([str(CONVERT), *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def in_process(capsys, script, *args):
    """A script module's main() in this process: (exit status, stderr)."""
    try:
        status = script.main([str(a) for a in args])
    except SystemExit as e:  # usage errors
        status = e.code
    return status, capsys.readouterr().err


def convert(capsys, *args):
    """convert.py's main() in this process: (exit status, stderr)."""
    return in_process(capsys, convert_script, *args)


def expect_errors(capsys, cases, out):
    """Each (arguments, exit status, text) case fails with that status and one last line, "convert.py: error: "
    and the text, without a traceback; nothing appears at `out`."""
    for args, expected_status, text in cases:
        status, stderr = convert(capsys, *args)
        assert status == expected_status, (args, stderr)
        last = stderr.splitlines()[-1]
        assert last.startswith("convert.py: error: ") and text in last, stderr
        assert "Traceback" not in stderr
    assert not out.exists()
