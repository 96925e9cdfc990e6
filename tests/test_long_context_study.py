"""The study's synthetic long-range tasks (benchmarks/long_context_tasks.py): associative recall
whose only earlier copy of a key is exactly D back, selective copying whose answers are the
span's data tokens in order, the sampler's resume and distance curriculum inside the Trainer,
and the study's merge of an older run."""
import importlib.util
import json
import os

import numpy as np
import pytest

from minitx.curriculum import CurriculumScheduler
from minitx.long_context import SegmentTraining
from minitx.models.gpt import GPT, get_config
from minitx.train import TrainConfig, Trainer, train

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tasks = load("long_context_tasks")


@pytest.mark.parametrize("seed", range(3))
def test_recall_targets_have_one_earlier_copy_exactly_d_back(seed):
    distances = [2, 8, 30, 64]
    seq, tdist = tasks.make_recall(np.random.default_rng(seed), 3, 96, distances)
    assert seq.shape == (3, 97) and tdist.shape == (3, 96)
    n_targets = 0
    for b in range(3):
        for t in np.flatnonzero(tdist[b]):
            D, key = tdist[b, t], seq[b, t]
            assert D in distances and t % 2 == 0 and key in tasks.KEYS
            earlier = np.flatnonzero(seq[b, :t] == key)
            assert list(earlier) == [t - D]                  # the one earlier copy, D back
            assert seq[b, t + 1] == seq[b, t - D + 1] and seq[b, t + 1] in tasks.VALUES
            n_targets += 1
    assert n_targets > 20
    with pytest.raises(ValueError, match="more than the 192 keys"):
        tasks.make_recall(np.random.default_rng(0), 1, 400, distances)


@pytest.mark.parametrize("seed", range(3))
def test_copy_targets_are_the_spans_data_in_order(seed):
    spans, n = [5, 12, 40], 4
    seq, tdist = tasks.make_copy(np.random.default_rng(seed), 3, 120, spans, n_data=n)
    found = 0
    for b in range(3):
        marks = np.flatnonzero(seq[b] == tasks.MARK)
        start = 0
        for m in marks:
            S = tdist[b, m]
            assert S in spans and m - S >= start               # the span follows the last episode
            data = seq[b, m - S:m][np.isin(seq[b, m - S:m], tasks.DATA)]
            assert len(data) == n and set(seq[b, start:m - S]) <= {tasks.BLANK}
            assert list(seq[b, m + 1:m + 1 + n]) == list(data)
            assert list(tdist[b, m:m + n]) == [S] * n
            start, found = m + 1 + n, found + 1
        assert (tdist[b] > 0).sum() == n * len(marks)
    assert found >= 3


CFG = get_config("llama", n_layer=1, n_head=2, n_embd=16, block_size=8,
                 attention_pattern="xl:mem=8")
TEXT = "an unused corpus: the task samplers make their own documents. " * 8


def run(sampler, steps, out_dir=None, resume=False):
    tc = TrainConfig(max_steps=steps, batch_size=2, warmup=1, min_lr=2e-3, seed=0,
                     eval_interval=10 ** 9,                 # constant lr: any max_steps alike
                     log_interval=10 ** 9, ckpt_interval=10 ** 9, eval_iters=1)
    return train(CFG, tc, TEXT, out_dir, resume=resume, log=lambda *a: None,
                 extensions=[SegmentTraining(sampler=sampler)])["model"]


@pytest.mark.parametrize("task", ["recall", "copy"])
def test_sampler_resume_is_bit_exact_mid_document(task, tmp_path):
    cur = CurriculumScheduler({"min_difficulty": 4, "max_difficulty": 20,
                               "schedule_type": "fixed_linear",
                               "schedule_config": {"total_curriculum_step": 12,
                                                   "difficulty_step": 1}})
    make = lambda: tasks.TaskSampler(task, 2, 8, 3, [4, 10, 20], 1, cur)  # noqa: E731
    full = run(make(), 8)
    run(make(), 4, str(tmp_path))                        # saved at segment 1 of a document
    resumed = run(make(), 8, str(tmp_path), resume=True)
    for k, v in full.state_dict().items():
        np.testing.assert_array_equal(v, resumed.state_dict()[k], err_msg=k)


def test_distance_curriculum_draws_only_distances_under_the_cap():
    cur = CurriculumScheduler({"min_difficulty": 4, "max_difficulty": 20,
                               "schedule_type": "fixed_linear",
                               "schedule_config": {"total_curriculum_step": 9,
                                                   "difficulty_step": 1}})
    s = tasks.TaskSampler("recall", 4, 8, 3, [4, 10, 20], 0, cur)
    ids = np.zeros(40, dtype=np.int64)
    tr = Trainer(GPT(CFG), TrainConfig(max_steps=12, batch_size=4), ids, ids, None,
                 log=lambda *a: None)
    allowed = {}
    for step in range(12):                                # a document starts every 3 steps
        tr.step = step
        starts = s.segment == 0
        s.next_batch(tr)
        if starts:
            allowed[step] = s.allowed
            drawn = set(np.unique(s.doc[1] >= 0))
            assert drawn == {False, True}                 # some targets in every document
    assert allowed == {0: [4], 3: [4, 10], 6: [4, 10], 9: [4, 10, 20]}
    for step, a in allowed.items():
        assert max(a) <= cur.get_difficulty(step + 1)
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        tasks.TaskSampler("sort", 2, 8, 3, [4], 0)


def test_study_merge_keeps_corpus_rows_and_leaves_out_older_synthetic_rows(tmp_path):
    study = load("long_context_study")
    new = study.main(["--quick", "--tasks", "recall", "copy", "--patterns", "dense", "xl",
                      "--impl", "flash2", "--out", str(tmp_path / "new")])
    old = {"args": {**new["args"], "tasks": ["corpus", "recall"], "recall_T": 128,
                    "distances": [8, 400]}, "wall_s": 1.0, "rows": [
        {"task": "corpus", "pattern": "dense", "seed": 0, "steps": 120, "bpb": 4.1,
         "params": 10, "T": 1024, "batch": 4},
        {"task": "recall", "pattern": "dense", "seed": 0, "steps": 800, "T": 128, "batch": 16,
         "acc": {"8": 0.7, "400": 0.05}, "params": 10}]}
    with open(tmp_path / "old.json", "w") as f:
        json.dump(old, f)
    merged = study.main(["--merge", str(tmp_path / "old.json"),
                         str(tmp_path / "new" / "long_context_study.json"),
                         "--out", str(tmp_path / "merged")])
    got = sorted((r["task"], r["pattern"]) for r in merged["rows"])
    assert got == [("copy", "dense"), ("copy", "xl"), ("corpus", "dense"), ("recall", "dense"),
                   ("recall", "xl")]
    assert merged["args"]["recall_T"] == 16 and merged["args"]["tasks"] == [
        "copy", "corpus", "recall"]
    md = (tmp_path / "merged" / "long_context_study.md").read_text()
    assert "| dense | 10 | 1/1 | 120 | 4.100 ± 0.000 |" in md and "copy S=30" in md
