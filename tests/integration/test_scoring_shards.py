"""Scoring split over processes (the GPU path's stand-in on CPU): `--shard i/n` processes, or torchrun ranks, score
disjoint chunks of one OUTPUT.parts/ and the last to finish merges; the file is the one a single process writes
(byte for byte with the torch engine, to a tolerance with ONNX), a rank killed mid-way and rerun completes it the
same, and a GPU asked for on a machine without one is refused in one line. The model is test_predict.py's tiny
fine-tuned BERT (its module fixture)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cli_runs
import pytest

from ort_training import predict

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_predict_fixtures", Path(__file__).with_name("test_predict.py"))
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
model = _fixtures.model  # the tiny fine-tuned classifier (hf_model/, test.csv): built once for this module

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

KILLING_WORKER = r'''
import os, signal, sys
from ort_training import predict
kill_rank, kill_after = int(sys.argv[1]), int(sys.argv[2])
done = []
def on_chunk(index):  # a real kill (no handler runs) after this rank's kill_after-th chunk is on disk
    done.append(index)
    if int(os.environ["RANK"]) == kill_rank and len(done) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
predict.run(predict.parse_config(sys.argv[3:]), on_chunk=on_chunk)
'''


def flags(model, out, engine="torch", *extra):
    return ["--model_dir", str(model["hf"]), "--input_file", str(model["test"]), "--output_file", str(out), "--text_column", "note",
            "--id_column", "note_id", "--id_header", "input", "--engine", engine, "--chunk_rows", "3", "--threads", "1",
            "--disable_progress_bar", *extra]


def single(model, out, engine="torch", *extra):
    assert predict.main(flags(model, out, engine, *extra)) == 0
    return out


def shards(model, out, n, engine="torch", *extra):
    """n processes started together, `--shard i/n` each; their JSON summaries."""
    procs = [subprocess.Popen([sys.executable, "-m", "ort_training.predict", *flags(model, out, engine, *extra), "--shard", f"{i}/{n}"],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]


def torchrun(tmp_path, model, out, nproc=2, kill=None):
    """`predict` under torchrun (RANK / WORLD_SIZE: each rank its shard); kill=(rank, after_chunks) SIGKILLs that rank."""
    if kill:
        worker = tmp_path / "worker.py"
        worker.write_text(KILLING_WORKER)
        target = [str(worker), str(kill[0]), str(kill[1])]
    else:
        target = ["-m", "ort_training.predict"]
    return cli_runs.torchrun([*target, *flags(model, out)], ENV, timeout=600, nproc=nproc)


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_shards_write_the_file_one_process_writes(model, tmp_path):
    whole = single(model, tmp_path / "whole.csv")
    out = tmp_path / "sharded.csv"
    summaries = shards(model, out, 2)
    assert out.read_bytes() == whole.read_bytes()  # torch engine: the same chunks, the same bytes
    assert sum(s["rows_scored_this_run"] for s in summaries) == 23 and sorted(s["shard"] for s in summaries) == ["0/2", "1/2"]
    assert sum(bool(s.get("merged")) for s in summaries) == 1  # exactly one merged; the other left it to that one
    assert not predict.parts_dir(out).exists()
    got = read(out)
    assert list(got[0])[:2] == ["note_id", "predicted"] and [r["note_id"] for r in got] == [r["note_id"] for r in read(model["test"])]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["identity"] == json.loads(whole.with_suffix(".json").read_text())["identity"]
    # A shard rerun after the merge: the output is complete, nothing is scored.
    assert predict.main(flags(model, out) + ["--shard", "1/2"]) == 0


def test_a_shard_still_working_keeps_the_folder_and_merges_last(model, tmp_path):
    """Shard 0 pauses after writing its last chunk (every chunk is then on disk) while shard 1 finishes: shard 1 must
    not merge and remove the folder under a shard still working (it holds the folder shared); shard 0 merges."""
    import threading

    whole = single(model, tmp_path / "whole.csv")
    out = tmp_path / "late.csv"
    paused, go, result = threading.Event(), threading.Event(), {}

    def hold(index):
        if index == 6:  # shard 0's chunks are 0, 2, 4, 6
            paused.set()
            assert go.wait(300)

    worker = threading.Thread(target=lambda: result.update(
        predict.run(predict.parse_config(flags(model, out, "torch", "--shard", "0/2")), on_chunk=hold)))
    worker.start()
    try:
        assert paused.wait(300)
        first = predict.run(predict.parse_config(flags(model, out, "torch", "--shard", "1/2")))
        assert first["merged"] is False and not out.exists() and len(list(predict.parts_dir(out).glob("part-*.csv"))) == 8
    finally:
        go.set()
        worker.join(300)
    assert result["merged"] is True and out.read_bytes() == whole.read_bytes() and not predict.parts_dir(out).exists()


def test_torchrun_rank_killed_midway_then_rerun_gives_the_same_rows(model, tmp_path):
    whole = single(model, tmp_path / "whole.csv")
    out = tmp_path / "ranks.csv"
    killed = torchrun(tmp_path, model, out, kill=(1, 2))
    assert killed.returncode != 0
    parts = predict.parts_dir(out)
    written = sorted(p.name for p in parts.glob("part-*.csv"))
    assert not out.exists() and 2 <= len(written) < 8, written  # 23 rows in chunks of 3: 8 chunks; rank 1 died after 2
    # --merge with chunks missing: refused naming them, nothing written.
    code = predict.main(flags(model, out) + ["--merge"])
    assert code == 2 and not out.exists()
    again = torchrun(tmp_path, model, out)
    assert again.returncode == 0, again.stderr[-12000:]
    assert out.read_bytes() == whole.read_bytes() and not parts.exists()
    scored = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert sum(s["rows_scored_this_run"] for s in scored) < 23  # the chunks on disk were kept, not scored again


def test_a_lost_merge_is_redone_by_merge(model, tmp_path):
    """Every chunk written but no output (the merging process died between): --merge writes the same file."""
    whole = single(model, tmp_path / "whole.csv")
    out = tmp_path / "m.csv"

    def stop_before_merge(index):
        if index == 7:
            raise KeyboardInterrupt

    cfg = predict.parse_config(flags(model, out))
    with pytest.raises(KeyboardInterrupt):
        predict.run(cfg, on_chunk=stop_before_merge)
    assert not out.exists() and len(list(predict.parts_dir(out).glob("part-*.csv"))) == 8
    assert predict.main(flags(model, out) + ["--merge"]) == 0
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.onnx
def test_onnx_shards_match_one_process(model, tmp_path):
    """Two shards sharing a fresh ONNX cache: the variant is made once (a lock), and the rows match one process."""
    cache = tmp_path / "cache"
    whole = single(model, tmp_path / "whole.csv", "onnx", "--cache_dir", str(cache))
    out = tmp_path / "onnx.csv"
    import shutil

    shutil.rmtree(cache)
    shards(model, out, 2, "onnx", "--cache_dir", str(cache))
    got, want = read(out), read(whole)
    assert [r["note_id"] for r in got] == [r["note_id"] for r in want] and [r["predicted"] for r in got] == [r["predicted"] for r in want]
    assert max(abs(float(g[k]) - float(w[k])) for g, w in zip(got, want) for k in g if k.startswith("p_")) <= 1e-5
    assert len(list(cache.glob("*/model-optimized.onnx"))) == 1


def test_gpu_requests_refused_in_one_line_without_cuda(model, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "gpu.csv"
    for extra, message in ((["--device", "cuda"], "--device cuda: torch.cuda.is_available() is false"),
                           (["--precision", "fp16"], "--precision fp16 needs --device cuda"),
                           (["--shard", "2/2"], "--shard 2/2: needs 0 <= i < n")):
        try:
            code = predict.main(flags(model, out) + extra)
        except SystemExit as exc:  # a flag refused while parsing: argparse's one line, exit 2
            code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        # the machine's refusal is one line; a flag refused while parsing is argparse's usage and its error line
        assert code == 2 and message in err[-1] and (len(err) == 1 or extra[0] != "--device"), err
    assert not out.exists() and not predict.parts_dir(out).exists()


def test_bf16_autocast_on_cpu_scores_close_to_fp32(model, tmp_path):
    """The autocast path the GPU's fp16 / bf16 takes, on the CPU's bf16: the same labels to a bf16 tolerance, and the
    precision in the record (a partial fp32 run is not continued in bf16)."""
    fp32 = single(model, tmp_path / "fp32.csv")
    bf16 = single(model, tmp_path / "bf16.csv", "torch", "--precision", "bf16")
    got, want = read(bf16), read(fp32)
    assert max(abs(float(g[k]) - float(w[k])) for g, w in zip(got, want) for k in g if k.startswith("p_")) <= 0.05
    assert json.loads(bf16.with_suffix(".json").read_text())["identity"]["precision"] == "bf16"


def test_score_launcher_dry_run_prints_the_torchrun_command(model, tmp_path):
    env = {**ENV, "DRY_RUN": "1", "PYTHON": sys.executable, "CODEDIR": str(REPO), "GPUS_PER_NODE": "4"}
    out = tmp_path / "scored.csv"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "score.sbatch"), *flags(model, out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node 4" in proc.stdout and "dry run: checked" in proc.stdout
    assert not out.exists()
