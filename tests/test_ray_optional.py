"""ray stays optional: without --replicas / --ray-address it is never imported, and with them but
without the [ray] extra, `serve` says what to install (no traceback)."""
from __future__ import annotations

import subprocess
import sys

from test_server_cli import clean_env

NO_RAY = "import sys; sys.modules['ray'] = None"   # as if the [ray] extra were not installed


def test_a_service_without_replicas_never_imports_ray(tmp_path):
    code = ("import sys\n"
            "from server.serve_command import build_service\n"
            "from server.settings import ServerSettings\n"
            f"service = build_service(ServerSettings(model='tiny', device='cpu', bridge='', data_dir={str(tmp_path)!r}))\n"
            "service.close()\n"
            "print('ray' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_replicas_without_ray_is_a_usage_error_naming_the_extra(tmp_path):
    code = (f"{NO_RAY}\nfrom server.cli import main\n"
            f"sys.exit(main(['serve', '--replicas', '2', '--model', 'tiny', '--bridge', '', '--data-dir', {str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install -e '.[ray]'" in result.stdout and "Traceback" not in result.stdout + result.stderr
