"""`endofuse train --task classify`: the ENTRep classifier's training loop.

Objective: cross-entropy of the class head on the L2-normalised (multi-level
CLS) image embedding, + cross-entropy on SLERP-mixed same-class embeddings, +
`contrastive_weight` x a symmetric image-text InfoNCE whose targets treat every
same-label pair in the batch as a positive (template captions repeat, so plain
CLIP targets would push identical captions apart).

Run folder as for segmentation: `last.pt` (every epoch and on SIGINT/SIGTERM,
with optimiser, scheduler, epoch/batch position, RNG states and history),
`best.pt` (by validation accuracy on cls_test.csv), `log.csv`, `config.json`.
Under torchrun every rank trains on its shard and the contrastive term sees the
global batch: image and text embeddings are all-gathered (see `gather_global`),
so the result is the single-process loss on the concatenated batch, and the
DDP-averaged gradient equals that loss's gradient.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from endofuse.checks import check_device
from endofuse.errors import EndofuseError, InvalidOptionError, MissingFileError
from endofuse.model.entrep import EntrepModel, build_entrep, same_class_partners, slerp
from endofuse.model.entrep_weights import (
    classifier_from_payload,
    load_clip_weights,
    read_classifier,
    save_classifier,
    tokenize,
)
from endofuse.train import distributed as ddp
from endofuse.train.classify_data import ImageDataset, class_names, load_classify_split
from endofuse.train.classify_metrics import classification_metrics, first_hit_ranks, retrieval_metrics
from endofuse.train.resume_checks import check_resume, check_run_folder
from endofuse.train.run_files import write_config, write_text_atomic
from endofuse.train.state import StopFlag, capture_rng, restore_rng

LOG_COLUMNS = ("epoch", "step", "lr", "loss", "ce", "slerp_ce", "contrastive", "val_accuracy", "val_macro_f1",
               "val_i2i_r1", "val_i2i_mrr", "seconds", "images_per_s")
DEFAULTS = {"entrep-tiny": {"lr": 1e-3, "batch_size": 32}, "entrep-b16": {"lr": 1e-4, "batch_size": 32}}
WARMUP_FRACTION = 0.05


@dataclass
class ClassifyOptions:
    data: Path
    out: Path
    model: str = "entrep-tiny"
    epochs: int = 10
    resume: bool = False
    batch_size: int | None = None
    lr: float | None = None
    pretrained: Path | None = None
    seed: int = 1234
    device: str | None = None
    progress: bool = True
    force: bool = False  # a new run may go into a folder holding files endofuse did not write
    overrides: dict = field(default_factory=dict)


class ClassifyStep(torch.nn.Module):
    """The training forward (so DDP's hooks see it): returns the loss terms."""

    def __init__(self, model: EntrepModel):
        super().__init__()
        self.model = model

    def forward(self, images, labels, tokens, generator=None):
        return classify_losses(self.model, images, labels, tokens, generator)


def classify_losses(model: EntrepModel, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor | None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """`loss` = ce + slerp_ce + contrastive_weight * contrastive (each term also returned)."""
    c = model.config
    z = F.normalize(model.encode_image(images), dim=-1)
    ce = F.cross_entropy(model.classify_features(z), labels)
    zero = ce.new_zeros(())
    slerp_ce = zero
    if c.slerp_prob > 0:
        # drawn on the CPU generator so a resumed run repeats them on any device
        mixed = torch.rand(len(z), generator=generator) < c.slerp_prob
        if mixed.any():
            partners = same_class_partners(labels.cpu(), generator)[mixed].to(z.device)
            t = (torch.rand(len(z), generator=generator) * c.slerp_max_t)[mixed].to(z)
            mixed = mixed.to(z.device)
            z_mix = slerp(z[mixed], z[partners], t)
            slerp_ce = F.cross_entropy(model.classify_features(z_mix), labels[mixed])
    contrastive = zero
    if c.contrastive_weight > 0 and tokens is not None:
        text = F.normalize(model.encode_text(tokens), dim=-1)
        z, text, labels = gather_global(z), gather_global(text), gather_global(labels)
        logits = model.logit_scale.exp().clamp(max=100) * z @ text.T
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        contrastive = 0.5 * (torch.sum(-targets * logits.log_softmax(dim=1), dim=1).mean()
                             + torch.sum(-targets * logits.T.log_softmax(dim=1), dim=1).mean())
    return {"loss": ce + slerp_ce + c.contrastive_weight * contrastive, "ce": ce, "slerp_ce": slerp_ce,
            "contrastive": contrastive}


def gather_global(local: torch.Tensor) -> torch.Tensor:
    """Concatenate `local` over the torchrun ranks in rank order (identity on one process).

    Every rank then computes the loss on the whole global batch, but only its own
    slot carries a gradient. Summed over ranks those partial gradients are the
    global loss's gradient; DDP averages instead of summing, so the own slot's
    gradient is scaled by the world size (`W * x - (W - 1) * x.detach()`: the
    value of x, W times its gradient). Batches must have the same size on every
    rank (DistributedSampler pads the data so they do).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    world = torch.distributed.get_world_size()
    if world == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local.detach().contiguous())
    if local.is_floating_point() and local.requires_grad:
        parts[torch.distributed.get_rank()] = world * local - (world - 1) * local.detach()
    return torch.cat(parts)


@torch.no_grad()
def embed_images(model: EntrepModel, dataset: ImageDataset, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(unit image embeddings (N, E) float32, class probabilities (N, C)) in dataset order."""
    model.eval()
    embs, probs = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        z = F.normalize(model.encode_image(batch["image"].to(device)), dim=-1)
        embs.append(z.cpu())
        probs.append(model.classify_features(z).softmax(dim=-1).cpu())
    return torch.cat(embs).numpy().astype(np.float32), torch.cat(probs).numpy()


@torch.no_grad()
def embed_texts(model: EntrepModel, texts: list[str], batch_size: int = 64,
                device: torch.device | str = "cpu") -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenize(texts[i:i + batch_size], model.config.context_length).to(device)
        out.append(F.normalize(model.encode_text(tokens), dim=-1).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def prompts_of(model: EntrepModel) -> dict[str, list[str]]:
    return {c: model.prompts(c) for c in model.classes}


def _cosine(total: int):
    warm = max(1, int(WARMUP_FRACTION * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


class ClassifyTrainer:
    def __init__(self, options: ClassifyOptions):
        self.o = options
        if options.model not in DEFAULTS:
            raise InvalidOptionError(f"--model for --task classify must be one of {list(DEFAULTS)}, "
                                     f"got {options.model!r}")
        if options.epochs < 1:
            raise InvalidOptionError(f"--epochs must be >= 1, got {options.epochs}")
        self.batch_size = options.batch_size or DEFAULTS[options.model]["batch_size"]
        self.lr = options.lr or DEFAULTS[options.model]["lr"]
        if self.batch_size < 1:
            raise InvalidOptionError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.run = Path(options.out)
        self.last_path, self.best_path = self.run / "last.pt", self.run / "best.pt"
        if self.run.exists() and not self.run.is_dir():
            raise EndofuseError(f"--out '{self.run}' is an existing file: give a run folder (e.g. runs/cls)")
        check_device(options.device)
        # every input is read and checked before the run folder is made: a refusal leaves nothing behind
        self.payload, train_records, val_records = self._read_inputs()
        # before the process group: every rank refuses the same bad --out in one line; only rank 0 judges
        # foreign files (another rank could list rank 0's write probe as one)
        main_rank = int(os.environ.get("RANK", "0")) == 0
        images = {f"{r.where} image": r.image for r in (*train_records, *val_records)}
        self.output = check_run_folder(self.run, options.data, options.pretrained, options.resume,
                                       options.force or not main_rank, images=images)
        self.d = ddp.setup(options.device)
        self.records = train_records, val_records

    def _read_inputs(self) -> tuple[dict | None, list, list]:
        """last.pt when resuming, both CSVs (every row), the model with its --pretrained weights."""
        payload = None
        if self.o.resume:
            if not self.last_path.is_file():
                raise MissingFileError(f"--resume: no {self.last_path} to continue from")
            payload = read_classifier(self.last_path)
            check_resume(payload, self._options_dict(), self.last_path)
            if payload["model_name"] != self.o.model:
                raise EndofuseError(f"{self.last_path}: holds model {payload['model_name']!r}, "
                                    f"not --model {self.o.model}")
        elif self.last_path.exists():
            raise EndofuseError(f"{self.run} already holds last.pt: pass --resume to continue it "
                                f"or choose another --out")
        train_records = load_classify_split(self.o.data, "train")
        classes = payload["classes"] if payload else class_names(train_records)
        val_records = load_classify_split(self.o.data, "test", classes)
        torch.manual_seed(self.o.seed)
        if payload is not None:
            self.model = classifier_from_payload(payload, source=str(self.last_path))
        else:
            self.model = build_entrep(self.o.model, classes, **self.o.overrides)
            if self.o.pretrained is not None:
                load_clip_weights(self.model, self.o.pretrained)
        return payload, train_records, val_records

    def _setup(self) -> dict | None:
        payload = self.payload
        train_records, val_records = self.records
        classes = self.model.classes
        self.model.to(self.d.device).train()
        prompts = prompts_of(self.model)
        size = self.model.img_size
        self.train_set = ImageDataset(train_records, size, classes, prompts, augment=True, seed=self.o.seed)
        self.val_set = ImageDataset(val_records, size, classes, prompts)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.d.world_size, rank=self.d.rank,
                                          shuffle=True, seed=self.o.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        step = ClassifyStep(self.model)
        if self.d.enabled:
            ids = [self.d.local_rank] if self.d.device.type == "cuda" else None
            step = DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)
        self.step_module = step
        params = self.model.trainable_parameters()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.05)
        total = self.o.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _cosine(total))
        self.start_epoch, self.skip_batches, self.best_acc, self.history = 0, 0, -1.0, []
        self.partial = ({}, 0)  # loss sums and image count of a resumed epoch's first part
        self.generator = torch.Generator().manual_seed(self.o.seed + self.d.rank)
        if payload is not None:
            extra = payload["extra"]
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
            self.start_epoch, self.skip_batches = extra["epoch"], extra["batch_in_epoch"]
            self.best_acc, self.history = extra["best_accuracy"], list(extra["history"])
            self.partial = (dict(extra.get("epoch_sums", {})), int(extra.get("epoch_count", 0)))
            self.generator.set_state(extra["generator"])
            states = extra["rng"]
            restore_rng(states[self.d.rank] if self.d.rank < len(states) else states[0])
        return payload

    def _options_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.o).items()}

    def _save_last(self, epoch: int, batch_in_epoch: int, sums: dict | None = None, count: int = 0) -> None:
        states = [capture_rng()]
        if self.d.enabled:
            states = [None] * self.d.world_size
            torch.distributed.all_gather_object(states, capture_rng())
        if not self.d.is_main:
            return
        save_classifier(self.last_path, self.model, extra={
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "best_accuracy": self.best_acc, "history": self.history,
            "rng": states, "generator": self.generator.get_state(), "options": self._options_dict(),
            "epoch_sums": dict(sums or {}), "epoch_count": count})

    def _train_epoch(self, epoch: int, stop: StopFlag) -> tuple[dict, bool]:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        indices = list(self.sampler)[self.skip_batches * self.batch_size:]
        loader = DataLoader(self.train_set, batch_size=self.batch_size, sampler=indices)
        (sums, count), done = self.partial, self.skip_batches
        self.partial = ({}, 0)
        bar = tqdm(loader, total=self.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{self.o.epochs}",
                   unit="it", disable=not (self.d.is_main and self.o.progress), dynamic_ncols=True)
        self.model.train()
        for batch in bar:
            images, labels = batch["image"].to(self.d.device), batch["label"].to(self.d.device)
            tokens = None
            if self.model.config.contrastive_weight > 0:
                tokens = tokenize(batch["caption"], self.model.config.context_length).to(self.d.device)
            terms = self.step_module(images, labels, tokens, self.generator)
            value = terms["loss"].item()
            nonfinite, stopping = ddp.any_rank(self.d, [not math.isfinite(value), stop.requested is not None])
            if nonfinite:
                raise EndofuseError(f"non-finite loss ({value}) at epoch {epoch + 1}, batch {done + 1}; "
                                    f"stopped without saving, the last good checkpoint is {self.last_path}")
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            self.scheduler.step()
            done += 1
            n = len(labels)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            count += n
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if stopping:  # the step in flight has finished: save its result and the epoch's position
                bar.close()
                self._save_last(epoch, done, sums, count)
                return {}, True
        bar.close()
        self.skip_batches = 0
        keys = ["loss", "ce", "slerp_ce", "contrastive"]
        totals = ddp.all_reduce_sum(self.d, [sums.get(k, 0.0) for k in keys] + [float(count)])
        means = {k: v / max(1.0, totals[-1]) for k, v in zip(keys, totals[:-1], strict=True)}
        return means | {"images": totals[-1]}, False

    def validate(self) -> dict:
        emb, probs = embed_images(self.model, self.val_set, device=self.d.device)
        labels = np.array([self.val_set.index[r.label] for r in self.val_set.records])
        cls = classification_metrics(labels, probs.argmax(1), self.model.classes)
        i2i = retrieval_metrics(first_hit_ranks(emb @ emb.T, labels, labels, exclude_self=True))
        self.model.train()
        return {"val_accuracy": cls["accuracy"], "val_macro_f1": cls["macro_f1"], "val_i2i_r1": i2i["recall@1"],
                "val_i2i_mrr": i2i["mrr"]}

    def _write_log(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(self.run / "log.csv", buf.getvalue())

    def _end_epoch(self, epoch: int, terms: dict, seconds: float) -> None:
        val = self.validate()
        row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch, "lr": self.scheduler.get_last_lr()[0],
               **{k: v for k, v in terms.items() if k != "images"}, **val, "seconds": seconds,
               "images_per_s": terms["images"] / max(seconds, 1e-9)}
        self.history.append(row)
        improved = val["val_accuracy"] > self.best_acc
        if improved:
            self.best_acc = val["val_accuracy"]
        self._save_last(epoch + 1, 0)
        if self.d.is_main:
            if improved:
                save_classifier(self.best_path, self.model, extra={"epoch": epoch + 1, "val": val,
                                                                   "options": self._options_dict()})
            self._write_log()
            print(f"epoch {epoch + 1}/{self.o.epochs}: loss {terms['loss']:.4f}  val accuracy {val['val_accuracy']:.4f}"
                  f"  macro-F1 {val['val_macro_f1']:.4f}  i2i R@1 {val['val_i2i_r1']:.4f}"
                  f"{' (best)' if improved else ''}  {row['images_per_s']:.1f} images/s", flush=True)

    def fit(self) -> int:
        """Train; 0 when done, 130 / 143 when stopped by SIGINT / SIGTERM (resumable with --resume)."""
        payload = self._setup()
        if self.d.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            write_config(self.run, {
                "task": "classify", "options": self._options_dict(), "batch_size": self.batch_size, "lr": self.lr,
                "classes": self.model.classes, "model": {"name": self.model.name, "config": asdict(self.model.config),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "trainable": sum(p.numel() for p in self.model.trainable_parameters())},
                "loss": "CE + SLERP-CE + contrastive_weight * label-aware InfoNCE",
                "train_images": len(self.train_set), "val_images": len(self.val_set),
                "world_size": self.d.world_size, "resumed": payload is not None, "start_epoch": self.start_epoch})
            print(f"training {self.model.name} ({len(self.model.classes)} classes: {', '.join(self.model.classes)}) "
                  f"at {self.model.img_size}px on {len(self.train_set)} images, validation: cls_test.csv "
                  f"({len(self.val_set)} images); batch {self.batch_size}, lr {self.lr}, {self.d.world_size} "
                  f"process(es) on {self.d.device}"
                  + (f"; resuming at epoch {self.start_epoch + 1}" if payload else ""),
                  flush=True)
        with StopFlag() as stop:
            for epoch in range(self.start_epoch, self.o.epochs):
                started = time.perf_counter()
                terms, interrupted = self._train_epoch(epoch, stop)
                if interrupted:
                    if self.d.is_main:
                        print(f"endofuse train: interrupted ({stop.signal_name}): saved resumable "
                              f"{self.last_path}; continue with --resume", file=sys.stderr, flush=True)
                    return stop.exit_code
                self._end_epoch(epoch, terms, time.perf_counter() - started)
        if self.d.is_main:
            print(f"done: best validation accuracy {self.best_acc:.4f} -> {self.best_path}", flush=True)
        return 0


def train_classifier(options: ClassifyOptions) -> int:
    trainer = ClassifyTrainer(options)
    try:
        return trainer.fit()
    finally:
        if trainer.output is not None and trainer.d.is_main:
            trainer.output.commit()  # the run's files are endofuse's, also after a failure
        ddp.teardown(trainer.d)
