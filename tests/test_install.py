"""pip install gives the programs memlookup-server and memlookup, with their man pages."""

from __future__ import annotations

import shutil
import subprocess
import venv

from tests.servers import ROOT, ServerProcess


def test_pip_install_provides_both_programs(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".hypothesis", ".venv"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    pip = subprocess.run([env_dir / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    bin_dir = env_dir / "bin"
    assert (env_dir / "share" / "man" / "man1" / "memlookup.1").exists()
    assert (bin_dir / "memlookup-keygen").exists()
    assert (env_dir / "share" / "man" / "man1" / "memlookup-keygen.1").exists()

    server = ServerProcess(program=[str(bin_dir / "memlookup-server")])
    try:
        set_ = subprocess.run([bin_dir / "memlookup", server.node, "set", "norway", "oslo"],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
        get = subprocess.run([bin_dir / "memlookup", server.node, "get", "norway"],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert (set_.returncode, get.returncode, get.stdout) == (0, 0, "oslo\n")
    finally:
        server.stop()
