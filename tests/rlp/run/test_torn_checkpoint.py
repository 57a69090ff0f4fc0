"""A torn newest local checkpoint (a save cut short by a full disk) does not block the resume.

A finished 6-batch run (``python -m rlp.train``, checkpoints every 2 batches) gives ba2, ba4 and ba6; a new save
folder gets copies of ba2 and ba4 and the first 1,000,000 bytes of ba6 (or half of it, when smaller) as
``ep0-ba6-rank0.pt``, what the crash left. The same command for that folder must: print one warning line naming the
torn file, rename it to ``ep0-ba6-rank0.pt.torn`` (its bytes kept), resume from ba4, write a complete ba6 and
reproduce batches 4 and 5 of the finished run exactly. Before the fix Composer stopped at ba6 with
``FileExistsError ... may conflict`` until the file was deleted by hand.
"""

from __future__ import annotations

import shutil

from rlp.run.metrics import read_metrics
from tests.helpers.training import launch, local_run_recipe

COMPARED = ('sample_ids', 'loss/train/total')


def test_torn_newest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path):
    path = local_run_recipe(tmp_path, '6ba')
    done = launch(path, nproc=None, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finished = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))

    src, torn = tmp_path / 'ckpt' / 'tiny', tmp_path / 'ckpt' / 'torn'
    torn.mkdir()
    for name in ('ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt'):
        shutil.copy(src / name, torn / name)
    whole = (src / 'ep0-ba6-rank0.pt').read_bytes()
    cut = whole[: min(1_000_000, len(whole) // 2)]
    (torn / 'ep0-ba6-rank0.pt').write_bytes(cut)

    again = launch(path, nproc=None, cwd=tmp_path, overrides=('run_name=torn',))
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    warnings = [line for line in out.splitlines() if 'torn checkpoint' in line]
    assert len(warnings) == 1 and str(torn / 'ep0-ba6-rank0.pt') in warnings[0], out[-4000:]
    assert 'FileExistsError' not in out and 'Traceback' not in out
    assert 'resuming from' in out and 'ep0-ba4-rank0.pt' in out
    assert (torn / 'ep0-ba6-rank0.pt.torn').read_bytes() == cut
    assert (torn / 'ep0-ba6-rank0.pt').stat().st_size > len(cut)
    resumed = read_metrics(str(tmp_path / 'runs' / 'torn' / 'metrics.jsonl'))
    assert sorted(resumed) == [4, 5]
    for batch in (4, 5):
        assert {k: resumed[batch][k] for k in COMPARED} == {k: finished[batch][k] for k in COMPARED}
