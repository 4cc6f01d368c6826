"""Every file the package writes appears whole under its name, with the permissions of any new file of the user's."""

import os
import stat

import numpy as np
import pytest

from medsa_peft.files import atomic_path, write_json, write_png


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@pytest.mark.parametrize(
    "write, name",
    [
        (lambda path: write_json({"dice": 0.5}, path), "metrics.json"),
        (lambda path: write_png(np.zeros((4, 6), np.uint8), path), "mask.png"),
    ],
)
def test_written_files_get_the_users_default_permissions(tmp_path, write, name):
    path = write(tmp_path / "out" / name)
    assert stat.S_IMODE(path.stat().st_mode) == _default_mode()
    assert [entry.name for entry in path.parent.iterdir()] == [name]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = write_json({"step": 1}, tmp_path / "state.json")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(path) as temporary:
            temporary.write_text("{half")
            raise RuntimeError("interrupted")
    assert path.read_text() == '{\n  "step": 1\n}\n'
    assert [entry.name for entry in tmp_path.iterdir()] == ["state.json"]
