"""Span corruption vs DEPTH on packed PubMed data (issue 29), on CPU: a tiny T5 trained with each objective for the
same wall time (DEPTH's step cost relative to span corruption's timed alternately in one process, so a busy machine
slows both alike), then (1) held-out span loss of both exports on the same span-corrupted held-out batches (noise 0.15,
mean span 3), (2) un-shuffling of held-out abstracts by the DEPTH model, plus ORT-vs-eager first steps and a
SIGTERM/resume check on the same data.

Un-shuffling (`unshuffle`): held-out sequences of 2+ sentences with every sentence shuffled (noise as trained);
exact-order accuracy and Kendall's tau of an order against the original, for
- `constrained` (the headline): greedy decoding in which a sentence-token step may only pick a sentence token of
  the input not yet written, the first step must pick one, and EOS is barred until all are written; the order is
  that in which the model writes them (any it has not written within twice the decoder's length keep the place the
  input shows them in; `constrained_all_sentences_written` says how often all were written);
- `free`: plain greedy `generate`; sentence tokens it never writes keep the place the input shows them in;
- `shown`: the shuffled input's own order (what a model that copies the input scores);
- `unigram`: a non-neural baseline, each sentence placed by the mean relative position (0 first .. 1 last) that
  its visible tokens had in the training sequences' sentences.

Changed for issue 29's order check: the collator numbers sentinels in the order the encoder shows the sentences
(before, in the original order, which gave the order away); the constrained decoder and the unigram baseline were
added; `--shuffle_probability` (DEPTH's 0.5 by default), `--depth_mask_rate` (0.3) and `--depth_steps` (a fixed
count instead of equal wall time) set the DEPTH run, and `--skip span` leaves out the span-corruption run and the
held-out span comparison.

    python -m data_prep packed --shard-dir W/shards --tokenizer W/bpe --out-root W --max-seq-length 128
    PYTHONPATH=. python benchmarks/bench_t5_objectives.py --data W/packed_seq_len_128/pubmed --out OUT --span_steps 240
    PYTHONPATH=. python benchmarks/bench_t5_objectives.py --data W/packed_seq_len_128/pubmed --out OUT \
        --skip ort resume span --depth_steps 1800 --shuffle_probability 1.0 --depth_mask_rate 0.15
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


def sentence_units(encoder: np.ndarray, layout) -> dict[int, list[int]]:
    """Each sentence token of an encoder input -> the text tokens the encoder shows of its sentence (sentinels and
    the closing <eosen> left out)."""
    units, current = {}, None
    for t in encoder.tolist():
        if layout.sent0 <= t < layout.end:
            current = units.setdefault(t, [])
        elif current is not None and t < layout.sentinel0:  # the data tokenizer's ids: text
            current.append(t)
        elif t == layout.eosen:
            current = None
    return units


def unigram_positions(files: list[Path], bound, max_sequences: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Per token id, the sum and count of the relative positions (0 first .. 1 last) of the training sentences it
    occurs in (sequences of 2+ sentences, split as the collator splits them)."""
    from ort_training.data.collate_t5 import _content, split_sentences

    total, count = np.zeros(bound.attrs.vocab_size), np.zeros(bound.attrs.vocab_size)
    seen = 0
    for path in files:
        tokens, offsets = packed_schema.read_sequences(path)
        starts = packed_schema.read_sentence_starts(path)
        for i in range(len(offsets) - 1):
            if seen >= max_sequences:
                return total, count
            text, lead = _content(tokens[offsets[i]:offsets[i + 1]], bound.attrs)
            sentences = split_sentences(text, np.asarray(starts[i], np.int64) - lead, bound.max_sentences)
            if len(sentences) < 2:
                continue
            seen += 1
            for j, sentence in enumerate(sentences):
                np.add.at(total, sentence, j / (len(sentences) - 1))
                np.add.at(count, sentence, 1)
    return total, count


class SentenceOrderConstraint:
    """A LogitsProcessor for one sequence: a sentence-token step picks only among the input's sentence tokens not yet
    written, the first step must pick one, and EOS waits until all are written."""

    def __init__(self, sentence_ids: list[int], sent0: int, sent_end: int, eos: int):
        self.ids, self.sent0, self.sent_end, self.eos = set(sentence_ids), sent0, sent_end, eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        written = {t for t in input_ids[0].tolist() if self.sent0 <= t < self.sent_end}
        barred = [t for t in range(self.sent0, self.sent_end) if t not in self.ids or t in written]
        scores[:, barred] = -float("inf")
        if written != self.ids:
            scores[:, self.eos] = -float("inf")
        if input_ids.shape[1] == 1:  # the first step opens a sentence
            allowed = scores[:, sorted(self.ids - written)].clone()
            scores[:] = -float("inf")
            scores[:, sorted(self.ids - written)] = allowed
        return scores


def unshuffle(model_dir: Path, data: Path, max_sequences: int, noise_density: float = 0.3) -> dict:
    """Un-shuffling of held-out sequences with every sentence shuffled (DEPTH's input, noise as trained): the model's
    order by constrained and by free greedy decoding, against the shown order and the unigram baseline."""
    from transformers import AutoModelForSeq2SeqLM, LogitsProcessorList

    from ort_training.data.collate_t5 import DepthCollator

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=False).eval()
    path = sorted(data.glob("*_test_*.hdf5"))[0]
    attrs = packed_schema.read_attrs(path)
    tokens, offsets = packed_schema.read_sequences(path)
    starts = packed_schema.read_sentence_starts(path)
    bound = DepthCollator(noise_density, shuffle_probability=1.0).bind(attrs, attrs.max_seq_length)
    sent0, sent_end = bound.layout.sent0, bound.layout.end
    total, count = unigram_positions(sorted(data.glob("*_training_*.hdf5")), bound)
    position = (total + 0.5) / (count + 1.0)  # one pseudo-count at the middle
    orders: dict[str, list[list[int]]] = {"constrained": [], "free": [], "shown": [], "unigram": []}
    complete = complete_constrained = 0
    for i in range(len(offsets) - 1):
        if len(orders["shown"]) >= max_sequences:
            break
        seq = tokens[offsets[i]:offsets[i + 1]]
        encoder, target, is_sentence, order = bound.example(seq, np.random.default_rng([11, i]), starts[i])
        truth = [int(t) for t, k in zip(target, is_sentence) if k]  # sentence tokens in the original order
        if len(truth) < 2:
            continue
        shown = [truth[j] for j in order]  # the input's order
        units = sentence_units(encoder, bound.layout)
        score = {t: float(np.mean(position[units[t]])) if units[t] else 0.5 for t in shown}
        unigram = sorted(shown, key=lambda t: score[t])  # stable: ties keep the shown order
        ids = torch.as_tensor(encoder)[None]
        with torch.no_grad():
            free = model.generate(input_ids=ids, max_new_tokens=bound.decoder_length, do_sample=False, num_beams=1)[0]
            constraint = SentenceOrderConstraint(truth, sent0, sent_end, attrs.sep_id)
            held = model.generate(input_ids=ids, max_new_tokens=2 * bound.decoder_length, do_sample=False, num_beams=1,
                                  logits_processor=LogitsProcessorList([constraint]))[0]
        written = {}
        for name, out in (("free", free), ("constrained", held)):
            w = []
            for t in out.tolist():
                if t in truth and t not in w:
                    w.append(t)
            written[name] = w
        complete += len(written["free"]) == len(truth)
        complete_constrained += len(written["constrained"]) == len(truth)
        for name, predicted in (("constrained", written["constrained"]), ("free", written["free"]), ("shown", shown),
                                ("unigram", unigram)):
            predicted = predicted + [t for t in shown if t not in predicted]  # never written: kept where shown
            orders[name].append([truth.index(t) for t in predicted])
    n = len(orders["shown"])
    out = {"sequences": n, "sentences_mean": float(np.mean([len(o) for o in orders["shown"]])),
           "free_all_sentences_written": complete / n, "constrained_all_sentences_written": complete_constrained / n}
    for name, found in orders.items():
        out[name] = {"exact_order_accuracy": float(np.mean([o == sorted(o) for o in found])),
                     "kendall_tau": float(np.mean([kendall_tau(o) for o in found])),
                     "first_sentence_accuracy": float(np.mean([o[0] == 0 for o in found]))}
    return out


def held_out_span_loss(model_dir: Path, data: Path, seed: int) -> dict:
    from transformers import AutoModelForSeq2SeqLM

    from ort_training.data.collate_t5 import SpanCorruptionCollator
    from ort_training.data.packed import held_out_packed_batches
    from ort_training.objectives import get_objective

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=False).eval()
    files = sorted(data.glob("*_test_*.hdf5"))
    batches = held_out_packed_batches(files, 16, None, seed, SpanCorruptionCollator(0.15, 3.0))
    return get_objective("span_corruption").evaluate(model, batches)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--span_steps", type=int, default=240, help="span corruption's training steps; DEPTH gets as many as "
                   "cost the same time (step_cost_ratio)")
    p.add_argument("--unshuffle_sequences", type=int, default=200)
    p.add_argument("--skip", nargs="*", default=[], choices=["ort", "resume", "span"],
                   help="span: no span-corruption run and no held-out span comparison (DEPTH and un-shuffling only)")
    p.add_argument("--depth_steps", type=int, default=None, help="DEPTH's training steps (default: as many as cost "
                   "--span_steps span-corruption steps)")
    p.add_argument("--shuffle_probability", type=float, default=0.5, help="DEPTH's probability of shuffling a "
                   "training sequence's sentences (0.5: DEPTH's default)")
    p.add_argument("--depth_mask_rate", type=float, default=0.3, help="DEPTH's noise density, in training and in the "
                   "un-shuffling inputs (0.3: DEPTH's default)")
    args = p.parse_args(argv)
    if not 0 <= args.shuffle_probability <= 1:
        p.error(f"--shuffle_probability {args.shuffle_probability}: must be in [0, 1]")
    if not 0 < args.depth_mask_rate < 1:
        p.error(f"--depth_mask_rate {args.depth_mask_rate}: must be in (0, 1)")
    if args.depth_steps is not None and args.depth_steps < 1:
        p.error(f"--depth_steps {args.depth_steps}: must be >= 1")
    if not args.data.is_dir():
        p.error(f"--data {args.data}: not a folder; pass the packed folder data_prep wrote (W/packed_seq_len_128/pubmed)")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: is a file; pass a folder (it is created)")
    from ort_training.objectives.depth import Depth

    Depth.shuffle_probability = args.shuffle_probability  # what get_objective("depth") builds in this process
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

    if "span" in args.skip:
        objectives = ("depth",)
    results["shuffle_probability"], results["depth_mask_rate"] = args.shuffle_probability, args.depth_mask_rate
    cost = None
    if args.depth_steps is None:
        cost = step_cost_ratio(args.data)
        results["seconds_per_step_interleaved"] = cost
        print(json.dumps({"seconds_per_step_interleaved": cost}), flush=True)
    for objective in objectives:  # equal wall time: span corruption's steps, and as many DEPTH steps as cost the same
        if objective == "depth" and args.depth_steps is not None:
            steps = args.depth_steps
        elif cost is None:  # DEPTH's steps fixed: span corruption takes --span_steps
            steps = max(10, args.span_steps)
        else:
            steps = max(10, round(args.span_steps * cost["span_corruption"] / cost[objective]))
        extra = {"mask_rate": args.depth_mask_rate} if objective == "depth" else {}
        losses, summary, wall = train(config(args.data, args.out / objective, objective, max_steps=steps, **extra))
        results[objective] = {"steps": steps, "wall_seconds": wall, "first_loss": losses[1], "last_loss": losses[steps],
                              **{k: v for k, v in summary.items() if k.startswith(("eval_", "final_"))}}
        print(json.dumps({objective: results[objective]}), flush=True)
    for objective in objectives:
        results[objective]["held_out_span"] = held_out_span_loss(args.out / objective / "hf_model", args.data, 7)
        print(json.dumps({objective: results[objective]["held_out_span"]}), flush=True)
    results["unshuffle_depth"] = unshuffle(args.out / "depth" / "hf_model", args.data, args.unshuffle_sequences,
                                           args.depth_mask_rate)
    print(json.dumps({"unshuffle_depth": results["unshuffle_depth"]}), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
