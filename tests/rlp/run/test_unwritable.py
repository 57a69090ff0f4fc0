"""``python -m rlp.train`` with an output that cannot be written, as real subprocesses on a tiny local stream.

A ``trainer.output_dir`` or local ``trainer.save_folder`` under a path whose parent is an existing FILE (which
fails even for root, unlike permissions), or that is a file itself: exit code 2 with exactly one line on stderr
naming the key and the blocking file, no traceback, and the working folder exactly as it was (the check runs before
torch.distributed, the model, the data and the first batch). A read-only folder is checked too where the tests do
not run as root.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.commands import error_line, run_command, tree
from tests.helpers.training import packed_samples, tiny_recipe, write_mds, write_recipe


@pytest.fixture
def workdir(tmp_path):
    """A tiny local stream (``data/train``), a valid NTP recipe and a plain file ``blocker``."""
    write_mds(str(tmp_path / 'data' / 'train'), packed_samples(8, 32, seed=3))
    recipe = tiny_recipe(streams={'web': {'local': 'data', 'split': 'train'}}, max_duration='2ba')
    write_recipe(tmp_path / 'recipe.yaml', recipe)
    (tmp_path / 'blocker').write_text('a file where a folder is expected\n')
    return tmp_path


@pytest.mark.parametrize(
    'override, expected',
    [
        (
            'trainer.output_dir=blocker/runs/{run_name}',
            "rlp.train: trainer.output_dir 'blocker/runs/tiny' cannot be written: '{root}/blocker' is a file, not a "
            'folder; rule: trainer.output_dir is a folder that can be created; fix: choose a path under a writable '
            'folder',
        ),
        (
            'trainer.save_folder=blocker/ckpt/{run_name}',
            "rlp.train: trainer.save_folder 'blocker/ckpt/tiny' cannot be written: '{root}/blocker' is a file, not "
            'a folder; rule: trainer.save_folder is a folder that can be created; fix: choose a path under a '
            'writable folder',
        ),
        (
            'trainer.output_dir=blocker',
            "rlp.train: trainer.output_dir='blocker' is a file; rule: trainer.output_dir is a folder; fix: choose "
            'another path',
        ),
    ],
)
def test_unwritable_output_is_refused_before_any_work(workdir, override, expected):
    """One line naming the key and the file in the way; nothing written anywhere in the working folder."""
    before = tree(workdir)
    proc = run_command(['-m', 'rlp.train', 'recipe.yaml', override], cwd=workdir)
    assert error_line(proc) == expected.format(root=workdir)
    assert tree(workdir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_output_folder_is_refused(workdir):
    """A save folder inside a folder without write permission: one line naming that folder."""
    (workdir / 'ro').mkdir(mode=0o555)
    proc = run_command(['-m', 'rlp.train', 'recipe.yaml', 'trainer.save_folder=ro/ckpt'], cwd=workdir)
    assert f"the folder '{workdir}/ro' is not writable" in error_line(proc)
