"""The training loop: recipes, validation every epoch, atomic checkpoints, resume, DDP.

Run folder: `last.pt` (every epoch, and on SIGINT/SIGTERM; holds optimiser,
scheduler, epoch/batch position, RNG states and the log history), `best.pt` (by
validation Dice), `log.csv`, `curves.png`, `config.json`. Under torchrun every
rank trains on its DistributedSampler shard and only rank 0 writes files.

`check_options` validates a `TrainOptions` once; `build_state` makes everything
a run works with (model, data, optimiser, resume position) into one explicit
`TrainState`; `Trainer` runs epochs on it. The loss is the recipe's
(`endofuse.train.recipes`): the model returns raw terms, the recipe weights them.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from endofuse.errors import EndofuseError, InvalidOptionError, MissingFileError
from endofuse.model import AUX_KEYS, MMEndoCL, build_model, count_parameters, read_checkpoint, save_checkpoint
from endofuse.model.checkpoint import model_from_checkpoint
from endofuse.model.dataset import holdout_split, load_split, split_csv_path
from endofuse.model.metrics import overlap_metrics
from endofuse.outputs import OutputFolder
from endofuse.train import distributed as ddp
from endofuse.train.data import PairDataset
from endofuse.train.methods import LOG_KEYS as METHOD_LOG_KEYS
from endofuse.train.methods import MethodOptions, MethodTerms
from endofuse.train.recipes import (
    ABLATIONS,
    DACL_TEMPERATURE,
    LOSS_TERMS,
    RECIPES,
    Recipe,
    loss_config,
    loss_description,
    segmentation_loss,
    term_values,
    total_loss,
)
from endofuse.train.resume_checks import check_resume, check_run_folder
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
    force: bool = False  # a new run may go into a folder holding files endofuse did not write
    overrides: dict = field(default_factory=dict)
    # related-work options (--fusion, --negatives, --mir, --distill, --dtm)
    methods: MethodOptions = field(default_factory=MethodOptions)

    def as_dict(self) -> dict:
        """JSON-ready (paths as strings, tuples as lists), for config.json and checkpoints."""
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


def check_options(o: TrainOptions) -> None:
    """Every option checked once, before any work; a bad one is an EndofuseError naming the flag."""
    if o.recipe not in RECIPES:
        raise InvalidOptionError(f"--recipe must be one of {list(RECIPES)}, got {o.recipe!r}")
    if o.epochs < 1:
        raise InvalidOptionError(f"--epochs must be >= 1, got {o.epochs}")
    if o.batch_size is not None and o.batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be >= 1, got {o.batch_size}")
    if o.lr is not None and not (math.isfinite(o.lr) and o.lr >= 0):
        raise InvalidOptionError(f"--lr must be a number >= 0, got {o.lr}")
    if not 0 < o.val_fraction < 1:
        raise InvalidOptionError(f"--val-fraction must be in (0, 1), got {o.val_fraction}")
    unknown = sorted(set(o.ablate) - set(ABLATIONS))
    if unknown:
        raise InvalidOptionError(f"--ablate: unknown term(s) {unknown}; choose from {','.join(ABLATIONS)}")
    if o.img_size is not None and (o.img_size < 16 or o.img_size % 16):
        raise InvalidOptionError(f"--img-size must be a positive multiple of 16, got {o.img_size}")
    if o.pretrained is not None and not Path(o.pretrained).is_file():
        raise MissingFileError(f"--pretrained: file not found: {o.pretrained}")
    o.methods.check(o.model)


@dataclass
class TrainState:
    """Everything a run works with, made once by `build_state`; the loop changes only the progress fields."""

    options: TrainOptions
    recipe: Recipe
    dist: ddp.Dist
    seed: int
    batch_size: int
    lr: float
    model: MMEndoCL
    step_module: torch.nn.Module  # the model's training forward, DDP-wrapped under torchrun
    train_set: PairDataset
    val_set: PairDataset
    val_source: str  # where validation pairs come from, for logs and config.json
    sampler: DistributedSampler
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    resumed: bool
    # progress (restored on --resume)
    start_epoch: int = 0
    skip_batches: int = 0
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)
    # loss sums of the epoch a signal interrupted, so its log.csv row covers the whole epoch
    partial_sums: dict = field(default_factory=dict)
    partial_count: int = 0
    output: OutputFolder | None = None  # a new run's folder: its files are recorded as endofuse's at the end
    methods: MethodTerms | None = None  # DTM state and the related-work terms' log values

    @property
    def run(self) -> Path:
        return Path(self.options.out)

    @property
    def last_path(self) -> Path:
        return self.run / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run / "best.pt"

    @property
    def wli_only(self) -> bool:
        return "nbi" in self.options.ablate


class TrainStep(torch.nn.Module):
    """`forward` = the model's `forward_train`, so DDP's hooks see the training forward."""

    def __init__(self, model: torch.nn.Module, temperature: float, distill: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.distill = distill

    def forward(self, wli, nbi, target=None):
        return self.model.forward_train(wli, nbi, target=target, distill=self.distill, temperature=self.temperature)


def build_state(options: TrainOptions) -> TrainState:
    """Check the options, join the process group, build model, data and optimiser (resuming last.pt if asked)."""
    check_options(options)
    # before the process group: every rank refuses the same bad --out in one line; only rank 0 judges
    # foreign files (another rank could list rank 0's write probe as one)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    output = check_run_folder(options.out, options.data, options.pretrained, options.resume,
                              options.force or not main_rank)
    recipe = RECIPES[options.recipe]
    dist_state = ddp.setup(options.device)
    try:
        if options.amp and dist_state.device.type != "cuda":
            raise EndofuseError("--amp needs a CUDA device (bf16/fp16 autocast is CUDA-only here)")
        payload = _resume_payload(options)
        seed = recipe.seed if options.seed is None else options.seed
        batch_size = options.batch_size if options.batch_size is not None else recipe.batch_size
        lr = options.lr if options.lr is not None else recipe.lr
        model = _model(options, payload, seed, dist_state)
        step_module: torch.nn.Module = TrainStep(model, DACL_TEMPERATURE, options.methods.distill)
        if dist_state.enabled:
            ids = [dist_state.local_rank] if dist_state.device.type == "cuda" else None
            step_module = DistributedDataParallel(step_module, device_ids=ids, find_unused_parameters=True)
        train_set, val_set, val_source = _datasets(options, recipe, model.img_size, seed)
        sampler = DistributedSampler(train_set, num_replicas=dist_state.world_size, rank=dist_state.rank,
                                     shuffle=True, seed=seed)
        steps_per_epoch = math.ceil(len(sampler) / batch_size)
        optimizer = recipe.make_optimizer(model.parameters(), lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_factor(options.epochs * steps_per_epoch))
        scaler = torch.amp.GradScaler("cuda", enabled=options.amp and not _bf16(dist_state))
        state = TrainState(options, recipe, dist_state, seed, batch_size, lr, model, step_module, train_set,
                           val_set, val_source, sampler, steps_per_epoch, optimizer, scheduler, scaler,
                           resumed=payload is not None, methods=MethodTerms(options.methods, dist_state))
        state.output = output
        if payload is not None:
            _restore_progress(state, payload["extra"])
        else:
            torch.manual_seed(seed + dist_state.rank)  # different dropout per rank, same weights
        return state
    except BaseException:
        ddp.teardown(dist_state)
        raise


def _resume_payload(o: TrainOptions) -> dict | None:
    last = Path(o.out) / "last.pt"
    if o.resume:
        if not last.is_file():
            raise MissingFileError(f"--resume: no {last} to continue from")
        payload = read_checkpoint(last)
        check_resume(payload, o.as_dict(), last)
        return payload
    if last.exists():
        raise EndofuseError(f"{o.out} already holds last.pt: pass --resume to continue it or choose another --out")
    return None


def _model(o: TrainOptions, payload: dict | None, seed: int, dist_state: ddp.Dist) -> MMEndoCL:
    torch.manual_seed(seed)
    if payload is not None:
        last = Path(o.out) / "last.pt"
        if payload["model_name"] != o.model:
            raise EndofuseError(f"{last}: holds model {payload['model_name']!r}, not --model {o.model}")
        model = model_from_checkpoint(payload, source=str(last))
    else:
        model = build_model(o.model, img_size=o.img_size, **o.overrides, **o.methods.model_overrides())
        if o.pretrained is not None:
            from endofuse.model import load_imagenet21k_npz

            load_imagenet21k_npz(model, o.pretrained)  # both encoders from an ImageNet-21k R50+ViT-B_16 npz
    return model.to(dist_state.device).train()


def _datasets(o: TrainOptions, recipe: Recipe, img_size: int, seed: int) -> tuple[PairDataset, PairDataset, str]:
    train = load_split(o.data, "train")
    test_csv = split_csv_path(o.data, "test")
    if test_csv is not None:
        val = load_split(o.data, "test")
        source = f"{test_csv.name} ({len(val)} pairs)"
    else:
        train, val = holdout_split(train, o.val_fraction, seed)
        source = f"held-out {o.val_fraction:.0%} of {train[0].csv_path.name} ({len(val)} pairs, seed {seed})"
    return PairDataset(train, img_size, recipe.make_augment(), seed=seed), PairDataset(val, img_size), source


def _restore_progress(state: TrainState, extra: dict) -> None:
    state.optimizer.load_state_dict(extra["optimizer"])
    state.scheduler.load_state_dict(extra["scheduler"])
    state.start_epoch, state.skip_batches = extra["epoch"], extra["batch_in_epoch"]
    state.best_dice, state.history = extra["best_dice"], list(extra["history"])
    state.methods.load_state_dict(extra.get("dtm"))
    states = extra["rng"]
    mine = states[state.dist.rank] if state.dist.rank < len(states) else states[0]
    restore_rng(mine)
    state.partial_sums, state.partial_count = dict(mine.get("epoch_sums", {})), int(mine.get("epoch_count", 0))


def _bf16(dist_state: ddp.Dist) -> bool:
    return dist_state.device.type == "cuda" and torch.cuda.is_bf16_supported()


class Trainer:
    """Runs the epochs of one `TrainState`."""

    def __init__(self, state: TrainState):
        self.s = state

    def _autocast(self):
        if not self.s.options.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if _bf16(self.s.dist) else torch.float16)

    # ---- checkpoints ----
    def _gather_rng(self, sums: dict | None = None, count: int = 0) -> list:
        # this rank's RNG plus the loss sums of an epoch cut short (restored per rank on --resume)
        state = {**capture_rng(), "epoch_sums": dict(sums or {}), "epoch_count": count}
        if not self.s.dist.enabled:
            return [state]
        states = [None] * self.s.dist.world_size
        dist.all_gather_object(states, state)
        return states

    def _save_last(self, epoch: int, batch_in_epoch: int, sums: dict | None = None, count: int = 0) -> None:
        s = self.s
        rng = self._gather_rng(sums, count)  # collective: every rank calls it
        if not s.dist.is_main:
            return
        extra = {"optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
                 "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_dice": s.best_dice,
                 "history": s.history, "rng": rng, "options": s.options.as_dict(),
                 "world_size": s.dist.world_size, "dtm": s.methods.state_dict()}
        save_checkpoint(s.last_path, s.model, extra=extra)

    # ---- loops ----
    def _batches(self, epoch: int):
        s = self.s
        s.sampler.set_epoch(epoch)
        s.train_set.set_epoch(epoch)
        indices = list(s.sampler)[s.skip_batches * s.batch_size:]
        # its own generator: a DataLoader otherwise draws its base seed from the global RNG when iterated,
        # which a run resumed mid-epoch would do once more than the uninterrupted run (shifting dropout)
        generator = torch.Generator().manual_seed(s.seed + epoch)
        return DataLoader(s.train_set, batch_size=s.batch_size, sampler=indices, num_workers=0, generator=generator)

    def _train_epoch(self, epoch: int, stop: StopFlag) -> tuple[dict, bool]:
        """One epoch; returns (mean loss terms, interrupted)."""
        s, d, epochs = self.s, self.s.dist, self.s.options.epochs
        sums, count, done = dict(s.partial_sums), s.partial_count, s.skip_batches
        s.partial_sums, s.partial_count = {}, 0
        loader = self._batches(epoch)
        bar = tqdm(loader, total=s.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{epochs}",
                   unit="it", disable=not (d.is_main and s.options.progress), dynamic_ncols=True)
        for batch in bar:
            wli = batch["wli"].to(d.device, non_blocking=True)
            nbi = None if s.wli_only else batch["nbi"].to(d.device, non_blocking=True)
            mask = batch["mask"].to(d.device, non_blocking=True)
            with self._autocast():
                logits, aux = s.step_module(wli, nbi, mask)
            aux = {k: v.float() for k, v in aux.items()}
            seg = segmentation_loss(logits.float(), mask)
            loss = total_loss(seg, aux, epoch, epochs, s.options.ablate, s.methods.factors())
            value = loss.item()
            nonfinite, stopping = ddp.any_rank(d, [not math.isfinite(value), stop.requested is not None])
            if nonfinite:
                step = epoch * s.steps_per_epoch + done + 1
                raise TrainingStopped(
                    f"non-finite loss ({value}) at epoch {epoch + 1}, step {step} (batch {done + 1} of the epoch); "
                    f"stopped without saving, the last good checkpoint is {s.last_path}")
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.scheduler.step()
            s.methods.observe(aux)
            done += 1
            n = wli.shape[0]
            logged = {**{k: aux[k] for k in AUX_KEYS}, **term_values(aux)}
            terms = {"loss": value, "seg": seg.item(), **{k: float(v.detach()) for k, v in logged.items()},
                     **s.methods.step_values(aux)}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
            if stopping:  # after the step, never mid-step: what is saved is exactly an uninterrupted run's state
                self._save_last(epoch, done, sums, count)
                return self._means(sums, count), True
            if bar.disable is False:
                bar.set_postfix(loss=f"{value:.3f}", seg=f"{terms['seg']:.3f}", fd=f"{terms['fd']:.3f}",
                                da=f"{terms['da']:.3f}", lr=f"{s.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        s.skip_batches = 0
        return self._means(sums, count), False

    def _means(self, sums: dict, count: int) -> dict:
        """Per-pair means over every rank; a loss term no rank saw (its option is off) is left out."""
        keys = ["loss", "seg", *AUX_KEYS, *(t.name for t in LOSS_TERMS if t.name not in AUX_KEYS)]
        keys += [k for k in METHOD_LOG_KEYS if k not in keys]
        seen = [1.0 if k in sums else 0.0 for k in keys]  # the same list on every rank: one collective
        totals = ddp.all_reduce_sum(self.s.dist, [sums.get(k, 0.0) for k in keys] + seen + [float(count)])
        values, present, n = totals[: len(keys)], totals[len(keys) : -1], max(1.0, totals[-1])
        means = {k: v / n for k, v, p in zip(keys, values, present, strict=True) if p > 0 or k in ("loss", "seg")}
        for k in ("fd", *AUX_KEYS):  # always logged, 0 for an epoch without steps
            means.setdefault(k, 0.0)
        return means | {"pairs": totals[-1]}

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean per-image Dice/IoU/sensitivity/specificity at model resolution (all ranks share the work)."""
        s, d = self.s, self.s.dist
        s.model.eval()
        mine = list(range(d.rank, len(s.val_set), d.world_size))
        sums = [0.0] * (len(VAL_KEYS) + 1)
        loader = DataLoader(torch.utils.data.Subset(s.val_set, mine), batch_size=s.batch_size)
        for batch in loader:
            wli = batch["wli"].to(d.device)
            nbi = None if s.wli_only else batch["nbi"].to(d.device)
            with self._autocast():
                pred = (s.model(wli, nbi).argmax(1) != 0).cpu().numpy()
            for p, g in zip(pred, batch["mask"].numpy(), strict=True):
                m = overlap_metrics(p, g)
                for i, k in enumerate(VAL_KEYS):
                    sums[i] += m[k]
                sums[-1] += 1
        s.model.train()
        totals = ddp.all_reduce_sum(d, sums)
        return {f"val_{k}": totals[i] / max(1.0, totals[-1]) for i, k in enumerate(VAL_KEYS)}

    def _end_epoch(self, epoch: int, terms: dict, seconds: float) -> None:
        s, epochs = self.s, self.s.options.epochs
        val = self.validate()
        ramps = {f"w_{t.name}": t.weight_at(epoch, epochs) for t in LOSS_TERMS if t.ramp is not None}
        row = {"epoch": epoch + 1, "step": (epoch + 1) * s.steps_per_epoch, "lr": s.scheduler.get_last_lr()[0],
               **ramps, **{k: v for k, v in terms.items() if k != "pairs"}, **val,
               "seconds": seconds, "pairs_per_s": terms["pairs"] / max(seconds, 1e-9)}
        s.history.append(row)
        improved = val["val_dice"] > s.best_dice
        if improved:
            s.best_dice = val["val_dice"]
        self._save_last(epoch + 1, 0)
        if s.dist.is_main:
            if improved:
                save_checkpoint(s.best_path, s.model, extra={
                    "epoch": epoch + 1, "val": val, "options": s.options.as_dict(), "val_source": s.val_source})
            write_log(s.run, s.history)
            write_curves(s.run, s.history)
            print(f"epoch {epoch + 1}/{epochs}: loss {terms['loss']:.4f}  val Dice {val['val_dice']:.4f}"
                  f"{' (best)' if improved else ''}  {row['pairs_per_s']:.1f} pairs/s", flush=True)

    def _write_config(self) -> None:
        s = self.s
        if not s.dist.is_main:
            return
        write_config(s.run, {
            "options": s.options.as_dict(), "recipe": asdict(s.recipe), "seed": s.seed,
            "batch_size": s.batch_size, "lr": s.lr, "epochs": s.options.epochs,
            "loss": loss_description(), "loss_weights": loss_config(),
            "ablate": list(s.options.ablate), "validation": s.val_source,
            "train_pairs": len(s.train_set), "steps_per_epoch": s.steps_per_epoch,
            "model": {"name": s.model.name, "img_size": s.model.img_size,
                      "parameters": count_parameters(s.model), "overrides": s.model.overrides},
            "world_size": s.dist.world_size, "device": str(s.dist.device),
            "resumed": s.resumed, "start_epoch": s.start_epoch,
        })

    def fit(self) -> int:
        """Train; returns 0 when done, 130 / 143 when stopped by SIGINT / SIGTERM (resumable)."""
        s = self.s
        if s.dist.is_main:
            s.run.mkdir(parents=True, exist_ok=True)
            print(f"training {s.model.name} at {s.model.img_size}px on {len(s.train_set)} pairs, "
                  f"validation: {s.val_source}; recipe {s.recipe.name}, batch {s.batch_size}, "
                  f"lr {s.lr}, {s.dist.world_size} process(es) on {s.dist.device}"
                  + (f"; resuming at epoch {s.start_epoch + 1}, batch {s.skip_batches}" if s.resumed else ""),
                  flush=True)
        self._write_config()
        with StopFlag() as stop:
            for epoch in range(s.start_epoch, s.options.epochs):
                started = time.perf_counter()
                terms, interrupted = self._train_epoch(epoch, stop)
                if interrupted:
                    if s.dist.is_main:
                        print(f"endofuse train: interrupted ({stop.signal_name}): saved resumable {s.last_path}; "
                              f"continue with --resume", file=sys.stderr, flush=True)
                    return stop.exit_code
                self._end_epoch(epoch, terms, time.perf_counter() - started)
        if s.dist.is_main:
            print(f"done: best validation Dice {s.best_dice:.4f} -> {s.best_path}", flush=True)
        return 0


def train(options: TrainOptions) -> int:
    state = build_state(options)
    try:
        return Trainer(state).fit()
    finally:
        if state.output is not None and state.dist.is_main:
            state.output.commit()
        ddp.teardown(state.dist)
