"""checkpoint.save_checkpoint pruning: the newest K are kept, and never at the cost of the one just written."""

from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


def steps(out):
    return [s for s, _ in list_checkpoints(out)]


def test_keeps_the_newest_k(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert steps(tmp_path) == [3, 4]


def test_never_deletes_the_checkpoint_just_written(tmp_path):
    # An older run left a higher step number (e.g. phase 1's step-1000 beside phase 2's step-200).
    save_checkpoint(tmp_path, 1000, {"step": 1000}, keep=1)
    save_checkpoint(tmp_path, 200, {"step": 200}, keep=1)
    assert steps(tmp_path) == [200]
    save_checkpoint(tmp_path, 1000, {"step": 1000}, keep=2)
    save_checkpoint(tmp_path, 400, {"step": 400}, keep=2)
    assert steps(tmp_path) == [400, 1000]
    assert load_checkpoint(tmp_path / "checkpoints" / "step-400") == {"step": 400}
