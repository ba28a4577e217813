"""azureml/: the dry-run pipeline YAML passes Azure ML's own schema (load_job), the recipe's global batch
drives per-GPU batch and accumulation for the VM's GPUs x nodes (the VM table gives the micro-batch),
continued pretraining carries its init checkpoint and tokenizer as job inputs, and the notebook runs
end to end in dry-run mode.

Everything runs offline: the dry run needs no credentials, and a dead proxy makes any network call fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ort_training.recipe import load_recipe

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is in the azureml extra")

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "azureml" / "submit.py"
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "AZURE_CLIENT_ID": ""}
PHASE1 = "azureml://datastores/workspaceblobstore/paths/bert/hdf5/phase1/"
PHASE2 = "azureml:pubmed-phase2-hdf5:3"


def load_submit():
    # Loaded by path: the folder is not a package (an azureml/__init__.py would shadow the azureml namespace of azureml-mlflow).
    if "bert_azureml_submit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bert_azureml_submit", SUBMIT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["bert_azureml_submit"]


@pytest.fixture(scope="module")
def submit_module():
    return load_submit()


def run_submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """submit.py's main() in this process (the SDK is imported once), in `cwd`, with a dead proxy: a network call fails."""
    old_env, old_cwd = os.environ.copy(), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(OFFLINE)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = load_submit().main(list(args))
            except SystemExit as exc:
                rc = exc.code
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def dry_run_yaml(tmp_path_factory):
    out = tmp_path_factory.mktemp("aml") / "job.yaml"
    proc = run_submit("--phase1-data", PHASE1, "--phase2-data", PHASE2, "--compute", "nd40-cluster", "--vm-size",
                      "Standard_ND40rs_v2", "--nodes", "4", "--phase2.max-steps", "100", "--dry-run", "--output-yaml",
                      str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


def test_dry_run_yaml_loads_as_a_two_step_pipeline(dry_run_yaml):
    from azure.ai.ml import load_job

    job = load_job(dry_run_yaml)  # schema validation by the SDK itself
    assert job.type == "pipeline" and sorted(job.jobs) == ["phase1", "phase2"]
    for step in job.jobs.values():
        assert step.type == "command"
        assert step.distribution.type == "pytorch" and step.distribution.process_count_per_instance == 8
        assert step.resources.instance_count == 4
        assert step.compute == "nd40-cluster"
    raw_inputs = yaml.safe_load(dry_run_yaml.read_text())["inputs"]
    for name, path in (("phase1_data", PHASE1), ("phase2_data", PHASE2)):
        # The SDK stores a data asset reference without its "azureml:" prefix.
        assert (job.inputs[name].mode, job.inputs[name].path.removeprefix("azureml:")) == ("ro_mount", path.removeprefix("azureml:"))
        assert raw_inputs[name] == {"type": "uri_folder", "mode": "ro_mount", "path": path}


def test_phase2_consumes_phase1_output_and_commands_follow_the_table(dry_run_yaml, submit_module):
    raw = yaml.safe_load(dry_run_yaml.read_text())
    phase1, phase2 = raw["jobs"]["phase1"], raw["jobs"]["phase2"]
    assert phase2["inputs"]["phase1_output"]["path"] == "${{parent.jobs.phase1.outputs.output}}"
    assert phase1["inputs"]["data"]["path"] == "${{parent.inputs.phase1_data}}"
    for step in (phase1, phase2):
        out = step["component"]["outputs"]["output"]
        assert (out["type"], out["mode"]) == ("uri_folder", "rw_mount")
        build = step["component"]["environment"]["build"]
        # the build context is the staged snapshot (it holds docker/ and the lock file), never the checkout
        assert build["dockerfile_path"] == "docker/Dockerfile" and Path(build["path"]) == Path(step["component"]["code"])
        assert (Path(build["path"]) / "docker" / "Dockerfile").is_file() and REPO not in [Path(build["path"]), *Path(build["path"]).parents]
        assert step["resources"]["shm_size"] == "16g"
    cmd1, cmd2 = phase1["component"]["command"].split(), phase2["component"]["command"].split()
    # Standard_ND40rs_v2 x 4 nodes = 32 GPUs: 65,536 / 32 = 2,048 per GPU = 128 x 16 (phase 1), 32,768 / 32 = 1,024
    # = 16 x 64 (phase 2), the split of the original notebook's table.
    assert cmd1[cmd1.index("--train_batch_size") + 1] == "2048" and cmd1[cmd1.index("--gradient_accumulation_steps") + 1] == "16"
    assert cmd2[cmd2.index("--train_batch_size") + 1] == "1024" and cmd2[cmd2.index("--gradient_accumulation_steps") + 1] == "64"
    assert cmd2[cmd2.index("--init_checkpoint") + 1] == "${{inputs.phase1_output}}" and "--phase2" in cmd2
    phase1_steps = load_recipe(submit_module.TABLE_RECIPE).phase1["max_steps"]  # the recipe's number, not a copy
    assert cmd2[cmd2.index("--phase1_end_step") + 1] == str(phase1_steps) and cmd2[cmd2.index("--max_steps") + 1] == "100"
    assert "--phase2" not in cmd1 and cmd1[cmd1.index("--output_dir") + 1] == "${{outputs.output}}"


def test_every_table_row_keeps_the_recipes_global_batch(submit_module):
    recipe = load_recipe(submit_module.TABLE_RECIPE)
    table = submit_module.defaults_table()
    rows = [r for r in table.splitlines() if r.startswith("| Standard_")]
    assert len(rows) >= 2 * len(submit_module.VM_SIZES)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell, phase in zip(cells[4:], ("phase1", "phase2")):
            total, product = cell.split(" = ")
            ranks, micro, accumulation = (int(x) for x in product.split(" x "))
            assert int(total.replace(",", "")) == ranks * micro * accumulation == getattr(recipe, phase)["global_batch_size"]
            assert ranks == int(cells[2])


def test_explicit_values_override_the_derived_ones_and_unknown_sizes_need_gpus(submit_module):
    cfg = submit_module.SubmitConfig(phase1_data="a", phase2_data="b", vm_size="Standard_NC24rs_v3", nodes=2)
    cfg.phase1.gradient_accumulation_steps = 64
    cfg.resolve()
    assert (cfg.phase1.train_batch_size, cfg.phase1.gradient_accumulation_steps) == (8192, 64)  # 65,536 / 8 GPUs
    assert (cfg.phase2.train_batch_size, cfg.phase2.gradient_accumulation_steps) == (4096, 512)  # micro 8 (16 GB V100)
    assert cfg.processes_per_node == 4
    with pytest.raises(ValueError, match="pass --gpus-per-node"):
        submit_module.SubmitConfig(phase1_data="a", phase2_data="b", vm_size="Standard_ND96asr_v4").resolve()
    a100 = submit_module.SubmitConfig(phase1_data="a", phase2_data="b", vm_size="Standard_ND96asr_v4", gpus_per_node=8, nodes=2)
    a100.resolve()  # not in the table: the recipe's micro-batch, the recipe's global batch over 16 GPUs
    assert (a100.phase1.train_batch_size, a100.phase1.gradient_accumulation_steps) == (4096, 64)


def test_zero_batch_is_refused_not_replaced_by_a_default(submit_module):
    cfg = submit_module.SubmitConfig(phase1_data="a", phase2_data="b")
    cfg.phase1.train_batch_size = 0
    with pytest.raises(ValueError, match="--train_batch_size must be >= 1, got 0|must be divisible"):
        cfg.resolve()
    cfg = submit_module.SubmitConfig(phase1_data="a", phase2_data="b")
    cfg.phase2.global_batch_size = 0
    with pytest.raises(ValueError, match="global_batch_size must be >= 1, got 0"):
        cfg.resolve()


def test_continued_pretraining_carries_init_checkpoint_and_tokenizer(tmp_path):
    from azure.ai.ml import load_job

    model = tmp_path / "my model"  # a local folder with a space: uploaded at submission, quoted nowhere wrongly
    model.mkdir()
    (model / "config.json").write_text("{}")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n")
    out = tmp_path / "job.yaml"
    proc = run_submit("--recipe", "continued_pretraining", "--phase1-data", PHASE1, "--phase2-data", PHASE2, "--init-checkpoint",
                      str(model), "--tokenizer", str(vocab), "--bert-config", "base", "--dry-run", "--output-yaml", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = load_job(out)
    assert job.inputs["init_checkpoint"].path == str(model) and job.inputs["tokenizer"].path == str(vocab)  # local, not azureml:
    raw = yaml.safe_load(out.read_text())
    cmd1, cmd2 = raw["jobs"]["phase1"]["component"]["command"], raw["jobs"]["phase2"]["component"]["command"]
    assert "--init_checkpoint ${{inputs.init_checkpoint}}" in cmd1 and "--vocab_file ${{inputs.tokenizer}}" in cmd1
    assert "--init_checkpoint ${{inputs.phase1_output}}" in cmd2 and "--vocab_file ${{inputs.tokenizer}}" in cmd2
    assert raw["jobs"]["phase1"]["inputs"]["init_checkpoint"]["path"] == "${{parent.inputs.init_checkpoint}}"


def test_a_local_path_that_does_not_exist_is_refused(tmp_path):
    proc = run_submit("--phase1-data", str(tmp_path / "nope"), "--phase2-data", PHASE2, "--dry-run", "--output-yaml",
                      str(tmp_path / "j.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such local file or folder" in proc.stderr


def test_values_with_spaces_are_quoted_in_the_command(submit_module):
    cfg = submit_module.SubmitConfig(phase1_data="a", phase2_data="b", bert_config="large")
    p1, _ = cfg.resolve().phase_configs()
    import dataclasses

    text = submit_module._train_command(dataclasses.replace(p1, bert_model="my model"))
    assert "--bert_model 'my model'" in text and "--input_dir ${{inputs.data}}" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--phase1-data", PHASE1], "--phase1-data and --phase2-data are required"),
        (["--phase1-data", PHASE1, "--phase2-data", PHASE2, "--dry-run"], "--dry-run needs --output-yaml"),
        (["--phase1-data", PHASE1, "--phase2-data", PHASE2, "--nodes", "3", "--dry-run", "--output-yaml", "j.yaml"],
         "8 GPU(s) x 3 node(s) = 24 processes (65,536 / 24 = 2,730.67)"),
        (["--phase1-data", PHASE1, "--phase2-data", PHASE2, "--phase1.train-batch-size", "100", "--phase1.gradient-accumulation-steps",
          "64", "--dry-run", "--output-yaml", "j.yaml"],
         "phase1: --train_batch_size 100 must be divisible by --gradient_accumulation_steps 64"),
        (["--phase1-data", PHASE1, "--phase2-data", PHASE2, "--phase2.learning-rate=-0.001", "--dry-run", "--output-yaml", "j.yaml"],
         "phase2: --learning_rate must be > 0"),
    ],
)
def test_bad_configs_fail_with_the_flag_named(tmp_path, args, message):
    proc = run_submit(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_notebook_runs_in_dry_run_mode_on_this_venv(tmp_path):
    import nbclient
    import nbformat
    from azure.ai.ml import load_job

    notebook = nbformat.read(REPO / "azureml" / "run-pretraining.ipynb", as_version=4)
    out = tmp_path / "notebook_job.yaml"
    old = os.environ.copy()
    os.environ.update(OFFLINE, BERT_AML_OUTPUT_YAML=str(out))  # the kernel inherits this environment
    try:
        # jupyter_client replaces the kernelspec's "python" with sys.executable: the kernel is this venv.
        nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO / "azureml")}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert f"python: {sys.executable}" in text
    assert "phase 2 reads ${{parent.jobs.phase1.outputs.output}}" in text
    assert load_job(out).type == "pipeline"


def test_step_commands_parse_with_the_trainer_parser(dry_run_yaml):
    from ort_training.config import parse_config

    raw = yaml.safe_load(dry_run_yaml.read_text())
    for name in ("phase1", "phase2"):
        argv = raw["jobs"][name]["component"]["command"].replace("${{", "/mnt/").replace("}}", "").split()
        assert argv[:3] == ["python", "-m", "ort_training.run_pretraining"]
        cfg = parse_config(argv[3:])  # SystemExit on a flag the trainer lacks or a value it refuses
        assert cfg.precision == "fp16" and cfg.backend == "ort" and cfg.config_file == "large"
        assert cfg.resume_from_checkpoint is True  # retries continue instead of restarting


def test_the_checkouts_amlignore_leaves_out_every_venv_data_and_local_state():
    """A second net (submit.py uploads a staged allow-list, below): if someone points Azure ML's code= at the checkout by
    hand, .amlignore still leaves out venvs (~300,000 files), data and outputs, and keeps every package folder."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    ignore = get_ignore_file(str(REPO))
    for left_out in (".venv/bin/python", ".venv-current/lib/x.py", ".git/HEAD", "demo_output/x.json", "ort_training/x.pt",
                     "notes.parquet", "train.csv", "notes_data/hdf5/a.hdf5", "results/phase1/x", "ft/hf_model/config.json",
                     "scored.csv", "data/notes.jsonl"):
        assert ignore.is_file_excluded(str(REPO / left_out)), left_out
    # ort_training/data/ is the HDF5 reader: a bare `data` line in .amlignore once left it out of the job
    for kept in ("ort_training/finetune.py", "ort_training/data/hdf5.py", "docker/Dockerfile", "constraints.txt"):
        assert not ignore.is_file_excluded(str(REPO / kept)), kept


# What the README's example makes in or beside a checkout: none of it may reach the snapshot.
LOCAL_DATA = ("notes.parquet", "train.csv", "dev.csv", "test.csv", "scored.csv", "held_out_notes.txt", "job.yaml",
              "notes_data/shards/notes_1.txt", "notes_data/hdf5_lower_case_1_seq_len_128/x_training_0.hdf5",
              "results/phase1/checkpoints/step-200/model.pt", "results/phase2/hf_model/vocab.txt", "ft/test_predictions.csv",
              "ft/hf_model/config.json", "demo_output/fill_mask.txt", "published_bert/config.json", ".venv/bin/python",
              # untracked files inside allow-listed folders: a stray export, or notes dropped next to the code
              "ort_training/notes.csv", "ort_training/scratch_notes.txt", "scripts/slurm/scored.csv", "azureml/outputs/job.yaml",
              "bundle/__pycache__/x.cpython-311.pyc")


def _aml_upload_list(folder: Path) -> set[str]:
    """The files azure-ai-ml's own code would upload for `code=folder`: the ignore file it finds there (.amlignore,
    else .gitignore) as a command component wraps it, and its folder walk (get_upload_files_from_folder ->
    traverse_directory), the same walk that hashes the snapshot and uploads it."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder
    from azure.ai.ml.entities._component.code import ComponentIgnoreFile

    listed = set()
    for ignore in (ComponentIgnoreFile(folder), get_ignore_file(folder)):
        listed |= {remote for _, remote in get_upload_files_from_folder(folder, ignore_file=ignore)}
    return listed


def _fake_checkout(root: Path) -> Path:
    repo = root / "checkout"
    tracked = {"bundle/cli.py": "x = 1\n", "data_prep/cli.py": "", "ort_training/finetune.py": "", "ort_training/data/hdf5.py": "",
               "ort_training/recipes/demo.yaml": "a: 1\n", "ort_training/configs/bert_tiny_config.json": "{}\n",
               "azureml/submit.py": "", "scripts/bootstrap_env.sh": "", "docker/Dockerfile": "FROM x\n", "pyproject.toml": "",
               "constraints.txt": "", ".dockerignore": "*\n", "tests/assets/pubmed/sample.csv": "a,b\n", "docs/x.md": "", "README.md": ""}
    for rel, text in tracked.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], check=True)
    for rel in LOCAL_DATA:  # after the commit: untracked, as a user's data is
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("note_id,note_text\n1,patient text\n")
    for rel in ("notes.parquet", "notes_data/x.hdf5"):  # beside the checkout too
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("patient text")
    return repo


def test_the_code_snapshot_is_an_allow_list_of_tracked_files(submit_module, tmp_path, monkeypatch):
    repo = _fake_checkout(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    staged = submit_module.stage_code(repo=repo)
    assert staged.parent == tmp_path / "cache" / "ort-bert-pretraining" / "azureml-code"  # outside the checkout
    uploaded = _aml_upload_list(staged)
    assert uploaded == {"bundle/cli.py", "data_prep/cli.py", "ort_training/finetune.py", "ort_training/data/hdf5.py",
                        "ort_training/recipes/demo.yaml", "ort_training/configs/bert_tiny_config.json", "azureml/submit.py",
                        "scripts/bootstrap_env.sh", "docker/Dockerfile", "pyproject.toml", "constraints.txt", ".dockerignore"}
    assert not uploaded & {*LOCAL_DATA, "tests/assets/pubmed/sample.csv", "README.md"}
    # the same code again: the same folder (Azure ML then reuses its snapshot and image); new code: a new one
    assert submit_module.stage_code(repo=repo) == staged
    (repo / "bundle" / "cli.py").write_text("x = 2\n")
    assert submit_module.stage_code(repo=repo) != staged
    with pytest.raises(ValueError, match="inside the checkout"):
        submit_module.stage_code(repo / "snapshot", repo=repo)


def test_without_git_the_snapshot_keeps_source_files_of_the_allow_list_only(submit_module, tmp_path):
    repo = _fake_checkout(tmp_path)
    import shutil

    shutil.rmtree(repo / ".git")
    uploaded = _aml_upload_list(submit_module.stage_code(tmp_path / "code", repo=repo))
    assert "ort_training/data/hdf5.py" in uploaded and "docker/Dockerfile" in uploaded and "constraints.txt" in uploaded
    assert not uploaded & {"notes.parquet", "train.csv", "scored.csv", "ort_training/notes.csv", "scripts/slurm/scored.csv",
                           "azureml/outputs/job.yaml", "bundle/__pycache__/x.cpython-311.pyc", "tests/assets/pubmed/sample.csv"}
    assert not any(f.split("/")[0] in ("notes_data", "results", "ft", "demo_output", "published_bert", ".venv") for f in uploaded)


def test_the_submitted_job_uploads_the_staged_snapshot_of_this_checkout(dry_run_yaml):
    """The dry run's job (what `az ml job create` submits) names the staged folder as code and build context; azure-ai-ml's
    walk of it finds the packages and the image's files, and nothing else: whatever data sits in this checkout."""
    raw = yaml.safe_load(dry_run_yaml.read_text())
    codes = {Path(step["component"]["code"]) for step in raw["jobs"].values()}
    assert len(codes) == 1
    code = codes.pop()
    assert REPO not in [code, *code.parents]
    uploaded = _aml_upload_list(code)
    load = load_submit()
    assert {f.split("/")[0] for f in uploaded} <= set(load.CODE_ALLOWLIST)
    tracked = set(subprocess.run(["git", "-C", str(REPO), "ls-files", "--", *load.CODE_ALLOWLIST], capture_output=True, text=True,
                                 check=True).stdout.split())
    assert uploaded == {f for f in tracked if (REPO / f).is_file()}
    for needed in ("ort_training/run_pretraining.py", "ort_training/data/hdf5.py", "ort_training/recipes/bert_large_biobert.yaml",
                   "bundle/cli.py", "docker/Dockerfile", "scripts/bootstrap_env.sh", "constraints.txt", "pyproject.toml"):
        assert needed in uploaded, needed
