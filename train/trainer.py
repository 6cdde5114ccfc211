"""The training loop: recipes, validation every epoch, atomic checkpoints, resume, DDP.

Run folder: `last.pt` (every epoch, and on SIGINT/SIGTERM; holds optimiser,
scheduler, epoch/batch position, RNG states and the log history), `best.pt` (by
validation Dice), `log.csv`, `curves.png`, `config.json`. Under torchrun every
rank trains on its DistributedSampler shard and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from endofuse.errors import EndofuseError
from endofuse.model import AUX_KEYS, build_model, count_parameters, read_checkpoint, save_checkpoint
from endofuse.model.checkpoint import model_from_checkpoint
from endofuse.model.dataset import holdout_split, load_split, split_csv_path
from endofuse.model.losses import fd_weight, segmentation_loss
from endofuse.model.metrics import overlap_metrics
from endofuse.train import distributed as ddp
from endofuse.train.data import PairDataset
from endofuse.train.recipes import RECIPES, total_loss
from endofuse.train.run_files import write_config, write_curves, write_log
from endofuse.train.state import StopFlag, capture_rng, restore_rng

VAL_KEYS = ("dice", "iou", "sensitivity", "specificity")


class TrainingStopped(EndofuseError):
    """Training cannot go on (non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainOptions:
    data: Path
    out: Path
    model: str = "tiny"
    epochs: int = 20
    recipe: str = "default"
    resume: bool = False
    batch_size: int | None = None
    lr: float | None = None
    amp: bool = False
    pretrained: Path | None = None
    ablate: tuple[str, ...] = ()
    img_size: int | None = None
    val_fraction: float = 0.2
    seed: int | None = None
    device: str | None = None
    progress: bool = True
    overrides: dict = field(default_factory=dict)


class TrainStep(torch.nn.Module):
    """`forward` = the model's `forward_train`, so DDP's hooks see the training forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wli, nbi):
        return self.model.forward_train(wli, nbi)


def load_pretrained(model: torch.nn.Module, path: Path) -> None:
    """Initialise both encoders from an ImageNet-21k R50+ViT-B_16 npz (the model package's loader)."""
    from endofuse.model import load_imagenet21k_npz

    load_imagenet21k_npz(model, path)


class Trainer:
    def __init__(self, options: TrainOptions):
        self.o = options
        if options.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {list(RECIPES)}, got {options.recipe!r}")
        if options.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {options.epochs}")
        if options.batch_size is not None and options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
        self.recipe = RECIPES[options.recipe]
        self.d = ddp.setup(options.device)
        if options.amp and self.d.device.type != "cuda":
            raise EndofuseError("--amp needs a CUDA device (bf16/fp16 autocast is CUDA-only here)")
        self.seed = self.recipe.seed if options.seed is None else options.seed
        self.batch_size = options.batch_size if options.batch_size is not None else self.recipe.batch_size
        self.lr = options.lr if options.lr is not None else self.recipe.lr
        self.wli_only = "nbi" in options.ablate
        self.run = Path(options.out)
        self.last_path, self.best_path = self.run / "last.pt", self.run / "best.pt"

    # ---- setup ----
    def _data(self) -> None:
        train = load_split(self.o.data, "train")
        if split_csv_path(self.o.data, "test") is not None:
            val = load_split(self.o.data, "test")
            self.val_source = f"{split_csv_path(self.o.data, 'test').name} ({len(val)} pairs)"
        else:
            train, val = holdout_split(train, self.o.val_fraction, self.seed)
            self.val_source = (f"held-out {self.o.val_fraction:.0%} of {train[0].csv_path.name} "
                               f"({len(val)} pairs, seed {self.seed})")
        img_size = self.model.img_size
        self.train_set = PairDataset(train, img_size, self.recipe.make_augment(), seed=self.seed)
        self.val_set = PairDataset(val, img_size)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.d.world_size, rank=self.d.rank,
                                          shuffle=True, seed=self.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)

    def _model(self, payload: dict | None) -> None:
        torch.manual_seed(self.seed)
        if payload is not None:
            if payload["model_name"] != self.o.model:
                raise EndofuseError(f"{self.last_path}: holds model {payload['model_name']!r}, not --model {self.o.model}")
            self.model = model_from_checkpoint(payload, source=str(self.last_path))
        else:
            self.model = build_model(self.o.model, img_size=self.o.img_size, **self.o.overrides)
            if self.o.pretrained is not None:
                load_pretrained(self.model, self.o.pretrained)
        self.model.to(self.d.device).train()
        step = TrainStep(self.model)
        if self.d.enabled:
            ids = [self.d.local_rank] if self.d.device.type == "cuda" else None
            step = DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)
        self.step_module = step

    def _optim(self, payload: dict | None) -> None:
        total = self.o.epochs * self.steps_per_epoch
        self.optimizer = self.recipe.make_optimizer(self.model.parameters(), self.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.recipe.lr_factor(total))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.o.amp and not self._bf16())
        self.start_epoch, self.skip_batches, self.best_dice, self.history = 0, 0, -1.0, []
        if payload is not None:
            extra = payload["extra"]
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
            self.start_epoch, self.skip_batches = extra["epoch"], extra["batch_in_epoch"]
            self.best_dice, self.history = extra["best_dice"], list(extra["history"])
            states = extra["rng"]
            restore_rng(states[self.d.rank] if self.d.rank < len(states) else states[0])
        else:
            torch.manual_seed(self.seed + self.d.rank)  # different dropout per rank, same weights

    def _bf16(self) -> bool:
        return self.d.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _autocast(self):
        if not self.o.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self._bf16() else torch.float16)

    # ---- checkpoints ----
    def _gather_rng(self) -> list:
        state = capture_rng()
        if not self.d.enabled:
            return [state]
        states = [None] * self.d.world_size
        dist.all_gather_object(states, state)
        return states

    def _save_last(self, epoch: int, batch_in_epoch: int) -> None:
        rng = self._gather_rng()  # collective: every rank calls it
        if not self.d.is_main:
            return
        extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_dice": self.best_dice,
                 "history": self.history, "rng": rng, "options": self._options_dict(),
                 "world_size": self.d.world_size}
        save_checkpoint(self.last_path, self.model, extra=extra)

    def _options_dict(self) -> dict:
        o = asdict(self.o)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in o.items()}

    # ---- loops ----
    def _batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        indices = list(self.sampler)[self.skip_batches * self.batch_size:]
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=indices, num_workers=0)

    def _train_epoch(self, epoch: int, stop: StopFlag) -> tuple[dict, bool]:
        """One epoch; returns (mean loss terms, interrupted)."""
        w_fd = fd_weight(epoch, self.o.epochs)
        sums, count, done = {}, 0, self.skip_batches
        loader = self._batches(epoch)
        bar = tqdm(loader, total=self.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{self.o.epochs}",
                   unit="it", disable=not (self.d.is_main and self.o.progress), dynamic_ncols=True)
        for batch in bar:
            wli = batch["wli"].to(self.d.device, non_blocking=True)
            nbi = None if self.wli_only else batch["nbi"].to(self.d.device, non_blocking=True)
            mask = batch["mask"].to(self.d.device, non_blocking=True)
            with self._autocast():
                logits, aux = self.step_module(wli, nbi)
            seg = segmentation_loss(logits.float(), mask)
            loss = total_loss(seg, {k: v.float() for k, v in aux.items()}, w_fd, self.o.ablate)
            value = loss.item()
            nonfinite, stopping = ddp.any_rank(self.d, [not math.isfinite(value), stop.requested is not None])
            if nonfinite:
                step = epoch * self.steps_per_epoch + done + 1
                raise TrainingStopped(
                    f"non-finite loss ({value}) at epoch {epoch + 1}, step {step} (batch {done + 1} of the epoch); "
                    f"stopped without saving, the last good checkpoint is {self.last_path}")
            if stopping:
                self._save_last(epoch, done)
                return self._means(sums, count), True
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            done += 1
            n = wli.shape[0]
            terms = {"loss": value, "seg": seg.item(), **{k: float(aux[k].detach()) for k in AUX_KEYS}}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
            if bar.disable is False:
                bar.set_postfix(loss=f"{value:.3f}", seg=f"{terms['seg']:.3f}", fd=f"{terms['fd']:.3f}",
                                da=f"{terms['da']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        self.skip_batches = 0
        return self._means(sums, count), False

    def _means(self, sums: dict, count: int) -> dict:
        keys = ["loss", "seg", *AUX_KEYS]
        totals = ddp.all_reduce_sum(self.d, [sums.get(k, 0.0) for k in keys] + [float(count)])
        n = max(1.0, totals[-1])
        return {k: v / n for k, v in zip(keys, totals[:-1])} | {"pairs": totals[-1]}

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean per-image Dice/IoU/sensitivity/specificity at model resolution (all ranks share the work)."""
        self.model.eval()
        mine = list(range(self.d.rank, len(self.val_set), self.d.world_size))
        sums = [0.0] * (len(VAL_KEYS) + 1)
        loader = DataLoader(torch.utils.data.Subset(self.val_set, mine), batch_size=self.batch_size)
        for batch in loader:
            wli = batch["wli"].to(self.d.device)
            nbi = None if self.wli_only else batch["nbi"].to(self.d.device)
            with self._autocast():
                pred = (self.model(wli, nbi).argmax(1) != 0).cpu().numpy()
            for p, g in zip(pred, batch["mask"].numpy()):
                m = overlap_metrics(p, g)
                for i, k in enumerate(VAL_KEYS):
                    sums[i] += m[k]
                sums[-1] += 1
        self.model.train()
        totals = ddp.all_reduce_sum(self.d, sums)
        return {f"val_{k}": totals[i] / max(1.0, totals[-1]) for i, k in enumerate(VAL_KEYS)}

    def _end_epoch(self, epoch: int, terms: dict, seconds: float) -> None:
        val = self.validate()
        row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
               "lr": self.scheduler.get_last_lr()[0], "w_fd": fd_weight(epoch, self.o.epochs),
               **{k: v for k, v in terms.items() if k != "pairs"}, **val,
               "seconds": seconds, "pairs_per_s": terms["pairs"] / max(seconds, 1e-9)}
        self.history.append(row)
        improved = val["val_dice"] > self.best_dice
        if improved:
            self.best_dice = val["val_dice"]
        self._save_last(epoch + 1, 0)
        if self.d.is_main:
            if improved:
                save_checkpoint(self.best_path, self.model, extra={
                    "epoch": epoch + 1, "val": val, "options": self._options_dict(), "val_source": self.val_source})
            write_log(self.run, self.history)
            write_curves(self.run, self.history)
            print(f"epoch {epoch + 1}/{self.o.epochs}: loss {terms['loss']:.4f}  val Dice {val['val_dice']:.4f}"
                  f"{' (best)' if improved else ''}  {row['pairs_per_s']:.1f} pairs/s", flush=True)

    def _write_config(self, resumed: bool) -> None:
        if not self.d.is_main:
            return
        write_config(self.run, {
            "options": self._options_dict(), "recipe": asdict(self.recipe), "seed": self.seed,
            "batch_size": self.batch_size, "lr": self.lr, "epochs": self.o.epochs,
            "loss": "0.5*CE + 0.5*Dice + w_fd(epoch)*fd + 1e-4*da, w_fd=min(0.05, 0.1*epoch/epochs)",
            "ablate": list(self.o.ablate), "validation": self.val_source,
            "train_pairs": len(self.train_set), "steps_per_epoch": self.steps_per_epoch,
            "model": {"name": self.model.name, "img_size": self.model.img_size,
                      "parameters": count_parameters(self.model), "overrides": self.model.overrides},
            "world_size": self.d.world_size, "device": str(self.d.device),
            "resumed": resumed, "start_epoch": self.start_epoch,
        })

    def _prepare_run(self) -> dict | None:
        if self.o.resume:
            if not self.last_path.is_file():
                raise FileNotFoundError(f"--resume: no {self.last_path} to continue from")
            return read_checkpoint(self.last_path)
        if self.last_path.exists():
            raise EndofuseError(f"{self.run} already holds last.pt: pass --resume to continue it or choose another --out")
        return None

    def fit(self) -> int:
        """Train; returns 0 when done, 130 when stopped by a signal (resumable)."""
        payload = self._prepare_run()
        self._model(payload)
        self._data()
        self._optim(payload)
        if self.d.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            print(f"training {self.model.name} at {self.model.img_size}px on {len(self.train_set)} pairs, "
                  f"validation: {self.val_source}; recipe {self.recipe.name}, batch {self.batch_size}, "
                  f"lr {self.lr}, {self.d.world_size} process(es) on {self.d.device}"
                  + (f"; resuming at epoch {self.start_epoch + 1}, batch {self.skip_batches}" if payload else ""),
                  flush=True)
        self._write_config(resumed=payload is not None)
        with StopFlag() as stop:
            for epoch in range(self.start_epoch, self.o.epochs):
                started = time.perf_counter()
                terms, interrupted = self._train_epoch(epoch, stop)
                if interrupted:
                    if self.d.is_main:
                        print(f"stopped by {stop.requested}: saved resumable {self.last_path}; "
                              f"continue with --resume", flush=True)
                    return 130
                self._end_epoch(epoch, terms, time.perf_counter() - started)
        if self.d.is_main:
            print(f"done: best validation Dice {self.best_dice:.4f} -> {self.best_path}", flush=True)
        return 0

    def close(self) -> None:
        ddp.teardown(self.d)


def train(options: TrainOptions) -> int:
    trainer = Trainer(options)
    try:
        return trainer.fit()
    finally:
        trainer.close()
