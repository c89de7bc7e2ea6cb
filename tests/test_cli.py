import subprocess
import sys

from server import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    for name in list(cli.COMMANDS) + ["bench"]:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["no-such-command"]) == cli.EXIT_USAGE
    assert "unknown command" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "server.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "serve" in result.stdout
