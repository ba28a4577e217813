"""Recipes state their global batch; every launcher derives per-GPU batch and accumulation from it.

The NVIDIA / ORT bioBERT recipe is pinned to the published numbers, quoted from the files they come from:

NVIDIA/DeepLearningExamples, PyTorch/LanguageModeling/BERT/scripts/run_pretraining.sh (commit af0115362e36),
where train_batch_size is per GPU per optimizer step and the log tag is `GBS=$(expr $train_batch_size \\* $num_gpus)`:
    train_batch_size=${1:-8192}            num_gpus=${4:-8}      gradient_accumulation_steps=${11:-128}
    train_batch_size_phase2=${1:-4096}     gradient_accumulation_steps_phase2=${11:-512}
  -> phase 1: 8 x 8,192 = 65,536 sequences per step (64 per GPU per pass); phase 2: 8 x 4,096 = 32,768 (8 per pass).

microsoft/onnxruntime-training-examples, nvidia-bert/azureml-notebooks/run-pretraining.ipynb, the tables
"we suggest parameters from below table for phase 1 / phase 2":
    | Standard_ND40rs_v2 | 1 (8 GPUs total)   | 65,536  | 128  | 64  |      (phase 1: global, feed, accumulation)
    | Standard_ND40rs_v2 | 1 (8 GPUs total)   | 32,768  | 16 | 256  |       (phase 2)
"""

from __future__ import annotations


import pytest

from ort_training.recipe import BATCH_KEYS, PHASES, RECIPES_DIR, load_recipe, phase_configs, plan_batch


NVIDIA_GPUS = 8
NVIDIA_PER_GPU = {"phase1": 8192, "phase2": 4096}      # train_batch_size, train_batch_size_phase2
NVIDIA_ACCUMULATION = {"phase1": 128, "phase2": 512}   # gradient_accumulation_steps, ..._phase2
ORT_NOTEBOOK_GLOBAL = {"phase1": 65_536, "phase2": 32_768}


def shipped_recipes() -> list[str]:
    return sorted(f.stem for f in RECIPES_DIR.glob("*.yaml") if "vm_sizes" not in f.stem)


def test_biobert_recipe_has_the_published_global_batches():
    recipe = load_recipe("bert_large_biobert")
    for phase in PHASES:
        section = getattr(recipe, phase)
        assert section["global_batch_size"] == NVIDIA_GPUS * NVIDIA_PER_GPU[phase] == ORT_NOTEBOOK_GLOBAL[phase]
    # On NVIDIA's 8 GPUs the derived split is NVIDIA's own: per-GPU batch and accumulation steps.
    plans = []
    p1, p2 = phase_configs(recipe, nproc_per_node=NVIDIA_GPUS, nnodes=1, plans=plans)
    for cfg, phase in zip((p1, p2), PHASES):
        assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (NVIDIA_PER_GPU[phase], NVIDIA_ACCUMULATION[phase])
    assert [p.global_batch_size for p in plans] == [ORT_NOTEBOOK_GLOBAL[p] for p in PHASES]


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_states_a_global_batch_not_a_per_gpu_one(name):
    recipe = load_recipe(name)
    for phase in PHASES:
        section = {**recipe.both, **getattr(recipe, phase)}
        assert set(BATCH_KEYS) <= set(section), (name, phase)
        assert not {"train_batch_size", "gradient_accumulation_steps"} & set(section), (name, phase)


@pytest.mark.parametrize(("gpus", "nodes"), [(8, 1), (8, 2), (8, 4), (4, 16), (1, 1)])
def test_the_global_batch_is_kept_on_any_gpu_count_that_divides_it(gpus, nodes):
    recipe = load_recipe("bert_large_biobert")
    plans = []
    p1, p2 = phase_configs(recipe, nproc_per_node=gpus, nnodes=nodes, plans=plans)
    for cfg, plan, phase in zip((p1, p2), plans, PHASES):
        assert cfg.train_batch_size * gpus * nodes == getattr(recipe, phase)["global_batch_size"]
        assert cfg.micro_batch_size <= getattr(recipe, phase)["micro_batch_size"]
        assert plan.micro_batch_size * plan.gradient_accumulation_steps * plan.ranks == plan.global_batch_size


def test_a_global_batch_that_does_not_split_is_refused_with_the_arithmetic():
    with pytest.raises(ValueError) as err:
        plan_batch(65_536, 64, 3, 2, "phase1")
    message = str(err.value)
    assert "3 GPU(s) x 2 node(s) = 6 processes" in message and "65,536 / 6 = 10,922.67" in message
    assert "--phase1.global_batch_size" in message


def test_micro_batch_is_the_largest_divisor_within_the_bound():
    plan = plan_batch(65_536, 48, 4, 1, "phase1")  # 16,384 per GPU: 48 does not divide it, 32 does
    assert (plan.train_batch_size, plan.micro_batch_size, plan.gradient_accumulation_steps) == (16_384, 32, 512)


def test_explicit_per_gpu_batch_wins_and_the_global_follows(caplog):
    recipe = load_recipe("bert_large_biobert")
    plans = []
    with caplog.at_level("WARNING", logger="ort_training.recipe"):
        p1, _ = phase_configs(recipe, phase1={"train_batch_size": 1024}, nproc_per_node=8, plans=plans)
    assert (p1.train_batch_size, p1.gradient_accumulation_steps, plans[0].global_batch_size) == (1024, 16, 8192)
    assert "the recipe's global batch is 65,536" in caplog.text


def test_recipe_batch_command_prints_the_split_and_refuses_with_exit_2(capsys):
    from ort_training.recipe import main

    assert main(["batch", "--recipe", "bert_large_biobert", "--gpus", "8", "--nodes", "4"]) == 0
    assert "phase1: global batch 65,536 = 32 GPU process(es) x 64 sequences x 32 accumulation steps" in capsys.readouterr().out
    assert main(["batch", "--recipe", "bert_large_biobert", "--gpus", "3"]) == 2
    assert "does not split" in capsys.readouterr().err
