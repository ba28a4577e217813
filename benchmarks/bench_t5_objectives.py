"""Span corruption vs DEPTH on packed PubMed data (issue 29), on CPU: a tiny T5 trained with each objective for the
same wall time (DEPTH's step cost relative to span corruption's timed alternately in one process, so a busy machine
slows both alike), then (1) held-out span loss of both exports on the same span-corrupted held-out batches (noise 0.15,
mean span 3), (2) un-shuffling of held-out abstracts by the DEPTH model (greedy `generate` on sequences whose
sentences are all shuffled: exact-order accuracy and Kendall's tau of the order it writes the sentence tokens in,
against the shuffled input's own order), plus ORT-vs-eager first steps and a SIGTERM/resume check on the same data.

    python -m data_prep packed --shard-dir W/shards --tokenizer W/bpe --out-root W --max-seq-length 128
    PYTHONPATH=. python benchmarks/bench_t5_objectives.py --data W/packed_seq_len_128/pubmed --out OUT --span_steps 240
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from bundle import packed_schema
from ort_training.config import PretrainConfig
from ort_training.loop.trainer import Trainer


def config(data: Path, out: Path, objective: str, **kw) -> PretrainConfig:
    base = dict(input_dir=str(data), eval_dir=str(data), config_file="t5_tiny", objective=objective, output_dir=str(out),
                backend="eager", attention="eager", train_batch_size=16, max_steps=10, learning_rate=1e-2,
                optimizer="adamwscale", lr_schedule="cosine", warmup_proportion=0.05, weight_decay=0.0, dropout=0.0,
                seed=7, num_steps_per_checkpoint=100000, disable_progress_bar=True, eval_batches=40)
    return PretrainConfig(**{**base, **kw})


def train(cfg: PretrainConfig, stop_at: int | None = None) -> tuple[dict, dict, float]:
    trainer = Trainer(cfg)
    losses = {}

    def hook(tr, rec):
        losses[rec["step"]] = rec["loss"]
        if stop_at is not None and tr.global_step == stop_at:
            signal.raise_signal(signal.SIGTERM)

    trainer.hooks.append(hook)
    t0 = time.perf_counter()
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return losses, summary, time.perf_counter() - t0


def step_cost_ratio(data: Path, rounds: int = 6) -> dict:
    """Seconds of one training step (forward, backward, AdamWScale step) of each objective's model on its own real
    batches, timed alternately in one process so that a busy machine slows both alike; the first round is dropped."""
    from ort_training.data.packed import PackedDataLoader
    from ort_training.loop.optim import build_optimizer
    from ort_training.models import load_model_config
    from ort_training.models.pretraining import PretrainingModel
    from ort_training.objectives import get_objective

    files = sorted(data.glob("*_training_*.hdf5"))
    setups = {}
    for name in ("span_corruption", "depth"):
        objective = get_objective(name)
        config = load_model_config("t5_tiny")
        config.pad_token_id = config.decoder_start_token_id = 0
        model = PretrainingModel(config, objective=objective)
        batches = iter(PackedDataLoader(files, 16, 0, objective.collator(None), prefetch=False))
        setups[name] = (model, build_optimizer(model, 1e-2, 0.0, 1.0, "adamwscale"), batches)
    seconds = {name: [] for name in setups}
    for r in range(rounds + 1):
        for name, (model, opt, batches) in setups.items():
            batch = next(batches)
            t0 = time.perf_counter()
            loss, _ = model(*model.inputs(batch))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if r:
                seconds[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in seconds.items()}


def kendall_tau(order: list[int]) -> float:
    """Kendall's tau between a predicted order (original indices in the order written) and the original order."""
    n = len(order)
    pairs = n * (n - 1) / 2
    concordant = sum(1 for i in range(n) for j in range(i + 1, n) if order[i] < order[j])
    return (2 * concordant - pairs) / pairs


def unshuffle(model_dir: Path, data: Path, max_sequences: int) -> dict:
    """Greedy generation on held-out sequences with every sentence shuffled (DEPTH's input, noise as trained)."""
    from transformers import AutoModelForSeq2SeqLM

    from ort_training.data.collate_t5 import DepthCollator

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=False).eval()
    path = sorted(data.glob("*_test_*.hdf5"))[0]
    attrs = packed_schema.read_attrs(path)
    tokens, offsets = packed_schema.read_sequences(path)
    starts = packed_schema.read_sentence_starts(path)
    bound = DepthCollator(shuffle_probability=1.0).bind(attrs, attrs.max_seq_length)
    sent0, sent_end = bound.layout.sent0, bound.layout.end
    exact = exact_input = 0
    taus, input_taus, complete = [], [], 0
    n = 0
    for i in range(len(offsets) - 1):
        if n >= max_sequences:
            break
        seq = tokens[offsets[i]:offsets[i + 1]]
        encoder, target, is_sentence, order = bound.example(seq, np.random.default_rng([11, i]), starts[i])
        truth = [int(t) for t, k in zip(target, is_sentence) if k]  # sentence tokens in the original order
        if len(truth) < 2:
            continue
        n += 1
        with torch.no_grad():
            out = model.generate(input_ids=torch.as_tensor(encoder)[None], max_new_tokens=bound.decoder_length, do_sample=False,
                                 num_beams=1)[0].tolist()
        written = []
        for t in out:
            if sent0 <= t < sent_end and t in truth and t not in written:
                written.append(t)
        complete += len(written) == len(truth)
        shown = [truth[j] for j in order]  # the input's order
        predicted = written + [t for t in shown if t not in written]  # sentences never written: kept where shown
        pred_order = [truth.index(t) for t in predicted]
        exact += pred_order == list(range(len(truth)))
        exact_input += order == list(range(len(truth)))
        taus.append(kendall_tau(pred_order))
        input_taus.append(kendall_tau(order))
    return {"sequences": n, "exact_order_accuracy": exact / n, "kendall_tau": float(np.mean(taus)),
            "all_sentences_written": complete / n, "input_exact_order": exact_input / n,
            "input_kendall_tau": float(np.mean(input_taus))}


def held_out_span_loss(model_dir: Path, data: Path, seed: int) -> dict:
    from transformers import AutoModelForSeq2SeqLM

    from ort_training.data.collate_t5 import SpanCorruptionCollator
    from ort_training.data.packed import held_out_packed_batches
    from ort_training.objectives import get_objective

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=False).eval()
    files = sorted(data.glob("*_test_*.hdf5"))
    batches = held_out_packed_batches(files, 16, None, seed, SpanCorruptionCollator(0.15, 3.0))
    return get_objective("span_corruption").evaluate(model, batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--span_steps", type=int, default=240, help="span corruption's training steps; DEPTH gets as many as "
                   "cost the same time (step_cost_ratio)")
    p.add_argument("--unshuffle_sequences", type=int, default=200)
    p.add_argument("--skip", nargs="*", default=[], choices=["ort", "resume"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": torch.get_num_threads()}
    objectives = ("span_corruption", "depth")

    if "ort" not in args.skip:  # the same first steps on both backends
        for objective in objectives:
            eager, _, _ = train(config(args.data, args.out / f"ort_ref_{objective}", objective, max_steps=3, eval_dir=None,
                                       skip_hf_export=True))
            os.environ.pop("ORTMODULE_FALLBACK_POLICY", None)
            ort, _, _ = train(config(args.data, args.out / f"ort_{objective}", objective, max_steps=3, eval_dir=None,
                                     skip_hf_export=True, backend="ort"))
            results[f"ort_vs_eager_{objective}"] = {"eager": eager, "ort": ort,
                                                    "max_rel_diff": max(abs(ort[s] - eager[s]) / abs(eager[s]) for s in eager)}
            print(json.dumps({objective: results[f"ort_vs_eager_{objective}"]}), flush=True)
    if "resume" not in args.skip:
        cfg = config(args.data, args.out / "resume_ref", "depth", max_steps=6, num_steps_per_checkpoint=2, eval_dir=None)
        ref, _, _ = train(cfg)
        cut, _, _ = train(dataclasses.replace(cfg, output_dir=str(args.out / "resume_cut")), stop_at=3)
        rest, _, _ = train(dataclasses.replace(cfg, output_dir=str(args.out / "resume_cut"), resume_from_checkpoint=True))
        results["resume_bitwise_depth"] = {**cut, **rest} == ref
        print(json.dumps({"resume_bitwise_depth": results["resume_bitwise_depth"], "ref": ref, "resumed": {**cut, **rest}}),
              flush=True)

    cost = step_cost_ratio(args.data)
    results["seconds_per_step_interleaved"] = cost
    print(json.dumps({"seconds_per_step_interleaved": cost}), flush=True)
    for objective in objectives:  # equal wall time: span corruption's steps, and as many DEPTH steps as cost the same
        steps = max(10, round(args.span_steps * cost["span_corruption"] / cost[objective]))
        losses, summary, wall = train(config(args.data, args.out / objective, objective, max_steps=steps))
        results[objective] = {"steps": steps, "wall_seconds": wall, "first_loss": losses[1], "last_loss": losses[steps],
                              **{k: v for k, v in summary.items() if k.startswith(("eval_", "final_"))}}
        print(json.dumps({objective: results[objective]}), flush=True)
    for objective in objectives:
        results[objective]["held_out_span"] = held_out_span_loss(args.out / objective / "hf_model", args.data, 7)
        print(json.dumps({objective: results[objective]["held_out_span"]}), flush=True)
    results["unshuffle_depth"] = unshuffle(args.out / "depth" / "hf_model", args.data, args.unshuffle_sequences)
    print(json.dumps({"unshuffle_depth": results["unshuffle_depth"]}), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
