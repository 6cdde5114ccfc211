"""`train --task classify` under torchrun (gloo, 2 CPU processes): the global-batch contrastive term.

Independent reference: one process on the concatenated batch. Two ranks on its
halves must give the same loss, DDP-averaged gradients and weights after a few
SGD steps, and both ranks must end with identical weights.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from endofuse.cli import main
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import load_classifier, read_classifier, tokenize
from endofuse.train.classify import ClassifyStep

pytestmark = pytest.mark.slow  # torchrun subprocesses

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16,
            context_length=16, text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2,
            slerp_prob=0.0, contrastive_weight=1.0)
STEPS, BATCH = 3, 8  # global batch 8 = 4 per rank

WORKER = """
import json, os, sys, torch
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, sys.argv[2])
from test_classify_ddp import TINY, STEPS, batches, fresh_model
from endofuse.train import distributed as ddp
from endofuse.train.classify import ClassifyStep

torch.set_num_threads(1)
d = ddp.setup("cpu")
model = fresh_model()
step = DistributedDataParallel(ClassifyStep(model), find_unused_parameters=True)
optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
losses, grads = [], None
for images, labels, tokens in batches():
    half = slice(d.rank * len(labels) // 2, (d.rank + 1) * len(labels) // 2)
    terms = step(images[half], labels[half], tokens[half])
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grads is None:  # the first step's averaged gradients
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    losses.append(terms["contrastive"].item())
torch.save({"state": model.state_dict(), "grads": grads, "contrastive": losses},
           os.path.join(sys.argv[1], f"rank{d.rank}.pt"))
ddp.teardown(d)
"""


def fresh_model():
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["a", "b", "c"], **TINY).train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.trainable_parameters():
        p.requires_grad_(True)
    return model


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        labels = torch.randint(0, 3, (BATCH,), generator=g)
        images = torch.rand(BATCH, 3, 32, 32, generator=g)
        tokens = tokenize([f"an endoscopy frame of class {'abc'[i]}" for i in labels.tolist()], 16)
        yield images, labels, tokens


def torchrun(*args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun(str(script), str(tmp_path), os.path.dirname(__file__))
    assert done.returncode == 0, done.stdout + done.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name  # DDP keeps the ranks identical

    torch.set_num_threads(1)
    model = fresh_model()
    step = ClassifyStep(model)
    # SGD, linear in the gradient: Adam would turn the float noise of gradients that are zero in exact
    # arithmetic (the key bias of softmax attention) into full-size steps
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    losses = []
    for i, (images, labels, tokens) in enumerate(batches()):
        terms = step(images, labels, tokens)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if i == 0:
            for name, p in model.named_parameters():
                if p.grad is not None:
                    torch.testing.assert_close(rank0["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        optimizer.step()
        losses.append(terms["contrastive"].item())
    # the contrastive term of each rank is the loss of the whole global batch, not of its half
    assert rank0["contrastive"] == pytest.approx(losses, rel=1e-5)
    assert rank1["contrastive"] == pytest.approx(losses, rel=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(rank0["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_torchrun_train_task_classify_end_to_end(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", str(data), "--pairs", "3", "--test-pairs", "1", "--size", "40x40", "--classes"]) == 0
    done = torchrun("-m", "endofuse", "train", "--task", "classify", "--data", str(data), "--out", str(run),
                    "--epochs", "1", "--batch-size", "2", "--no-progress", "--device", "cpu", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("epoch 1/1:") == 1  # only rank 0 prints
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["train_images"] == 6
    extra = read_classifier(run / "last.pt")["extra"]
    assert len(extra["rng"]) == 2 and extra["epoch"] == 1
    assert [row["step"] for row in extra["history"]] == [2]  # 6 images / 2 ranks = 3 each, batch 2
    model = load_classifier(run / "best.pt")
    assert model.classes == ["large_lesion", "normal", "small_lesion"]
    assert main(["evaluate", "--task", "classify", "--data", str(data), "--checkpoint", str(run / "best.pt"),
                 "--out", str(tmp_path / "eval")]) == 0
