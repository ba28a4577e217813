"""The built images, tested from the inside by docker/test_image.sh --skip-build (CPU image; --current: the
current-stack GPU image, checked on CPU: torch's CUDA build and bundled libraries, the installed wheel's
data_prep, tiny_cpu both phases, fill-mask on the export, bench_gpu.py --smoke).

Building takes ~11 minutes on 2 cores (buildah, vfs), so `make image-test` builds and this test only
reuses an image already in the engine's storage: tests/test_environment.py in the image, data_prep
making real PubMed HDF5, the image's default command (tiny_cpu, both phases) on the folders mounted
exactly as docker/launch.sh mounts them, and the export loaded with its tokenizer (fill-mask).
It checks the image that was built, not the Dockerfile as it is now: rebuild after changing it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"cpu": os.environ.get("IMAGE", "ort-bert-pretraining:cpu-test"),
          "current": os.environ.get("IMAGE_CURRENT", "ort-bert-pretraining:current-test")}
pytestmark = pytest.mark.slow


def _image_present(image: str) -> tuple[bool, str]:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        ok = subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
        return ok, "docker"
    if shutil.which("buildah"):
        env = dict(os.environ, STORAGE_DRIVER=os.environ.get("STORAGE_DRIVER", "vfs"))
        ok = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, env=env).returncode == 0
        return ok, "buildah"
    return False, "none"


@pytest.mark.parametrize("flavour", ["cpu", "current"])
def test_image_passes_its_in_image_checks(tmp_path, flavour):
    image = IMAGES[flavour]
    present, engine = _image_present(image)
    if not present:
        pytest.skip(f"no image {image} in the {engine} engine's storage: build it with `make image-test{'-current' if flavour == 'current' else ''}`; "
                    "this test only re-runs the in-image checks")
    flags = ["--skip-build"] + (["--current"] if flavour == "current" else [])
    proc = subprocess.run(["bash", str(REPO / "docker" / "test_image.sh"), *flags], cwd=REPO,
                          env=dict(os.environ, WORK=str(tmp_path), IMAGE=image), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "all in-image checks passed" in proc.stderr
    assert "fill-mask on the export" in proc.stdout
    results = tmp_path / "results"
    for phase in (1, 2):
        assert json.loads((results / f"phase{phase}" / "summary.json").read_text())["phase"] == phase
    assert (results / "phase2" / "hf_model" / "vocab.txt").is_file()  # the tokenizer came through launch.sh's vocab mount
    if flavour == "current":
        assert "torch cuda build: None" not in proc.stdout and "check_gpu_stack: ok (current stack)" in proc.stdout
        assert json.loads((results / "bench_gpu_smoke.json").read_text())
