"""``memlookup-keygen`` never writes a key through a symbolic link planted where a key file goes.

A secret key written through a link would land wherever the link points
(another user's file, a world-readable place); one that replaced the link's
target would destroy it. The real program runs in a subprocess.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.servers import ROOT


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.keygen", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("suffix", [".key_secret", ".key"])
@pytest.mark.parametrize("force", [False, True])
def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path, suffix, force):
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    keys.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    (keys / f"web1{suffix}").symlink_to(victim)
    made = keygen(*(["--force"] if force else []), str(keys), "web1")
    assert made.returncode == 1
    assert f"{keys / f'web1{suffix}'} is a symbolic link" in made.stderr
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert (keys / f"web1{suffix}").is_symlink(), "the link itself must stay as it was"
    assert os.listdir(keys) == [f"web1{suffix}"], "nothing may be written when one of the two is refused"


@pytest.mark.parametrize("force", [False, True])
def test_a_dangling_symlink_is_refused_and_nothing_is_created_where_it_points(tmp_path, force):
    keys = tmp_path / "keys"
    keys.mkdir()
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    (keys / "web1.key_secret").symlink_to(target)
    made = keygen(*(["--force"] if force else []), str(keys), "web1")
    assert made.returncode == 1 and "is a symbolic link" in made.stderr
    assert not target.exists()
    assert sorted(os.listdir(keys)) == ["web1.key_secret"], "no key file and no temp file left behind"

