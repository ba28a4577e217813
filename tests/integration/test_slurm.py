"""scripts/slurm/ on a real one-node Slurm cluster (Debian's slurmctld + slurmd + munge, started here).

The fixture writes a private config (CPUs=2, ports chosen free, state in a temp folder), starts its
own munged, slurmctld and slurmd, and stops exactly those processes at the end. Jobs run the real
two-phase runner (`python -m ort_training.pretrain --recipe tiny_cpu`, eager backend on CPU) with 2
processes (gloo), then the export is loaded. A second job is sent SIGTERM mid-phase-1 the way Slurm
preempts a batch job; it must checkpoint, requeue itself (exit-143 contract) and finish on its rerun.
Needs root (the daemons) and the Debian packages; .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ort_training.data.synthetic import write_dataset, write_vocab

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", "slurmd")
pytestmark = [pytest.mark.slow, pytest.mark.stack_free]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_reason() -> str | None:
    missing = [d for d in (*DAEMONS, "sbatch", "scontrol", "squeue") if not _which(d)]
    if missing:
        return (f"Slurm is not installed (missing {', '.join(missing)}); "
                "apt-get install slurmctld slurmd munge (.ci/run does so as root)")
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    return None


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge", "log"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = r / "munge" / "munge.socket"
        self.conf.write_text(f"""\
ClusterName=bert-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
KillWait=30
SlurmdTimeout=60
JobRequeue=1
NodeName={self.host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        log = open(r / "log" / "daemons.out", "ab")
        self.procs.append(subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={r / 'munge' / 'munged.pid'}", f"--log-file={r / 'log' / 'munged.log'}",
             f"--seed-file={r / 'munge' / 'munge.seed'}"], stdout=log, stderr=log))
        self._wait(lambda: sock.exists(), "munged's socket")
        self.procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)], stdout=log, stderr=log, env=self.env))
        self._wait(lambda: self.run("scontrol", "ping").returncode == 0, "slurmctld")
        self.procs.append(subprocess.Popen([_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host], stdout=log, stderr=log, env=self.env))
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "the node to be idle")

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([_which(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True, timeout=60)
        if check:
            assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        return proc

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"{what} did not come up in {timeout:.0f} s; logs:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def job_state(self, job: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_job(self, job: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job_state(job)
            if info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}:
                return info
            time.sleep(1)
        raise AssertionError(f"job {job} not finished in {timeout} s: {self.job_state(job)}\n{self.logs()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # only the daemons this fixture started
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_data")
    write_dataset(root / "p1", 2, 64, seq_len=32, max_pred=5, vocab_size=1000, seed=1)
    write_dataset(root / "p2", 2, 32, seq_len=64, max_pred=8, vocab_size=1000, seed=2)
    write_vocab(root / "vocab.txt", 1000)
    return root


def submit(cluster: Cluster, script: str, submit_dir: Path, data: Path, out: Path, sbatch_args: tuple[str, ...] = (),
           extra_args: str = "", **env_vars: str) -> str:
    env = dict(cluster.env, CODEDIR=str(REPO), PYTHON=sys.executable, RECIPE="tiny_cpu", OUTPUT_DIR=str(out),
               PHASE1_DIR=str(data / "p1"), PHASE2_DIR=str(data / "p2"), VOCAB_FILE=str(data / "vocab.txt"),
               GPUS_PER_NODE="2", DEVICE="cpu", EXTRA_ARGS=f"--disable_progress_bar {extra_args}".strip(),
               OMP_NUM_THREADS="1", **env_vars)
    proc = subprocess.run([_which("sbatch"), "--parsable", "--cpus-per-task=2", *sbatch_args, str(REPO / "scripts" / "slurm" / script)],
                          cwd=submit_dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_log(submit_dir: Path, info: dict[str, str], job: str) -> str:
    return (submit_dir / f"{info['JobName']}-{job}.out").read_text(errors="replace")


def check_export(out: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    for phase in (1, 2):
        summary = json.loads((out / f"phase{phase}" / "summary.json").read_text())
        assert summary["phase"] == phase
    hf = out / "phase2" / "hf_model"
    tok, model = AutoTokenizer.from_pretrained(hf), AutoModelForMaskedLM.from_pretrained(hf)
    assert model.config.vocab_size == len(tok) == 1000


@pytest.mark.parametrize("script", ["pretrain_1node.sbatch", "pretrain_multinode.sbatch"])
def test_two_phase_job_with_two_processes(cluster, data, tmp_path, script):
    out = tmp_path / "results"
    # The multinode script asks for 2 nodes; this cluster has one, so it runs its srun/c10d path with --nodes=1.
    multi = "multi" in script
    job = submit(cluster, script, tmp_path, data, out, sbatch_args=("--nodes=1",) if multi else (),
                 **({"RDZV_PORT": str(_free_port())} if multi else {}))
    info = cluster.wait_job(job, timeout=420)
    log = job_log(tmp_path, info, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-4000:]}"
    assert "both phases done" in log
    torchrun = (out / "phase1" / "train.log").read_text()
    assert "--nproc_per_node=2" in torchrun  # two ranks under torchrun
    if multi:
        assert "--rdzv_backend=c10d" in torchrun and f"--rdzv_id=slurm-{job}" in torchrun
    check_export(out)


def test_sigterm_checkpoints_requeues_and_the_rerun_finishes(cluster, data, tmp_path):
    """What Slurm does on preemption or at --signal=B:TERM@T: SIGTERM to the batch shell."""
    out = tmp_path / "results"
    steps_total = 60  # SIGTERM lands once 3 steps are logged: dozens of steps later it is still mid-phase-1
    job = submit(cluster, "pretrain_1node.sbatch", tmp_path, data, out,
                 extra_args=f"--phase1.max_steps {steps_total} --phase1.num_steps_per_checkpoint 1000")
    ckpts = out / "phase1" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (out / "phase1" / "metrics.jsonl").is_file() or len((out / "phase1" / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, f"phase 1 did not start training: {cluster.job_state(job)}\n{cluster.logs()}"
        assert cluster.job_state(job).get("JobState") in {"PENDING", "RUNNING", "CONFIGURING"}, cluster.job_state(job)
        time.sleep(1)
    assert not ckpts.exists() or not list(ckpts.iterdir())  # no periodic checkpoint yet: the one we find is SIGTERM's
    cluster.run("scancel", "--signal=TERM", "--batch", job, check=True)
    # The job checkpoints, exits 143 and requeues itself; on its rerun phase 1 resumes, then phase 2 runs.
    deadline = time.monotonic() + 480
    released = False
    while True:
        info = cluster.job_state(job)
        if not released and info.get("JobState") == "PENDING" and int(info.get("Restarts", 0)) >= 1:
            # Slurm holds a requeued job ~2 minutes (BeginTime); a test need not wait that long, but not 0 s either:
            # slurmd revokes the first run's credential with a 1-second timestamp, and a rerun allocated in that
            # same second is killed ("Job credential revoked", exit 1, no log line), as it was in CI.
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now+3", check=True)
            released = True
        if info.get("JobState") == "COMPLETED" or (info.get("JobState") in {"FAILED", "CANCELLED"} and int(info.get("Restarts", 0)) >= 1):
            break
        assert time.monotonic() < deadline, f"job {job} did not finish after the requeue: {info}\n{cluster.logs()}"
        time.sleep(1)
    log = job_log(tmp_path, info, job)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}\n{cluster.logs()}"
    assert int(info["Restarts"]) == 1, info
    assert "SIGTERM: forwarding to the runner" in log and "requeueing job" in log and "both phases done" in log
    assert "restart 1]" in log  # the second run of the same job id
    preempted = json.loads((out / "phase1" / "preempted.json").read_text()) if (out / "phase1" / "preempted.json").exists() else None
    summary = json.loads((out / "phase1" / "summary.json").read_text())
    assert summary["global_step"] == steps_total
    # The rerun resumed from the SIGTERM checkpoint: the metrics hold each step once, not a restart from 1.
    steps = [json.loads(line)["step"] for line in (out / "phase1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, steps_total + 1)), (steps[:5], len(steps), preempted)
    check_export(out)
