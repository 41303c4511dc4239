"""The one training loop (Ray Train worker function) for the pretraining, teacher, student and metric stages.

``train_worker(loop_config)`` runs in every Ray Train worker. It builds the
model and the stage's objective, restores the latest checkpoint if there is
one (``ray.train.get_checkpoint()``), then steps until ``--steps``:

    for each optimiser step:
        grad_accum x (batch from Ray Data -> forward under autocast -> loss -> backward)  [parallel.py]
        clip, step, schedule
        every --log-every:         a metrics row (loss terms averaged over workers)
        every --val-every:         validation on every worker's share, all-reduced
        every --checkpoint-every:  data position merged over workers, checkpoint
        each of these is one ray.train.report (a barrier every rank calls alike)

Rank 0 writes metrics.jsonl, gauges, trackers, curves.png, samples/ and, at
the end, model.pth (and, for pretraining, encoder.pth: the encoder alone in
DINOv2's layout). What differs between stages is chosen in
``depthlib.training.objectives``; nothing here branches on the stage except
through that table.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
import torch.distributed as dist

from depthlib import storage
from depthlib.evaluation.protocol import Protocol, score, valid_pixels
from depthlib.inference import autocast_for, predict_images
from depthlib.models.specs import get_spec
from depthlib.training import records
from depthlib.training.config import TrainConfig
from depthlib.training.data import load_validation_rows
from depthlib.training.objectives import (STAGES, MaskedImageObjective, MetricObjective, RelativeObjective,
                                          build_stage_model)
from depthlib.training.optim import make_optimizer, make_scheduler
from depthlib.training.parallel import compile_model, is_distributed, optimizer_step, wrap_for_workers
from depthlib.training.plan import ConsumptionLedger, GroupPlan
from depthlib.training.progress import learning_verdict
from depthlib.training.state import (TrainState, read_checkpoint_dir, set_rng_state, write_checkpoint_dir,
                                     write_run_state)
from depthlib.training.weights import frozen_encoder, initialise, start_metric_head_at
from depthlib.transforms import normalize

FINAL_MODEL = "model.pth"
FINAL_ENCODER = "encoder.pth"  # pretraining: the encoder alone, as dinov2_vit*14_pretrain.pth
FAILURE_MARKER = "_injected_failure"  # --fail-at-step: fail once, then resume

# Ray Train turns print() in workers into log records AND echoes them; a logger prints once.
log = logging.getLogger("depthlib.train")


def _all_reduce_sum(values: list[float], device) -> list[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_reduce_max(value: float, device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _all_gather(obj):
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rebatch(batches, batch_size: int, keep):
    """Batches of exactly ``batch_size`` rows from ``batches`` (dicts of
    tensors), dropping rows where ``keep(batch)`` (a bool tensor) is False.
    Batches that keep every row pass through unchanged."""
    pending: list[dict] = []
    n_pending = 0
    for batch in batches:
        mask = keep(batch)
        if not bool(mask.all()):
            batch = {k: v[mask] for k, v in batch.items()}
        n = len(batch["group"])
        if n == batch_size and not pending:
            yield batch
            continue
        if n:
            pending.append(batch)
            n_pending += n
        while n_pending >= batch_size:
            merged = {k: torch.cat([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            rest = {k: v[batch_size:] for k, v in merged.items()}
            n_pending -= batch_size
            pending = [rest] if n_pending else []


class Trainer:
    """One worker's training state and loop (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, plan: GroupPlan, run_name: str, plan_ref=None,
                 s3: storage.S3Config | None = None):
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        self.plan = plan
        self.plan_ref, self.s3 = plan_ref, s3  # for --deterministic's own data stream
        self.run_name = run_name
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.stage = STAGES[cfg.stage]
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            # warn_only: CUDA has no deterministic backward for the head's bilinear
            # upsampling; torch warns there instead of stopping the run.
            torch.use_deterministic_algorithms(True, warn_only=True)

        model = build_stage_model(self.stage, cfg.encoder, cfg.max_depth, cfg.pretrain_target)
        source = initialise(model, cfg.init_from, cfg.pretrained_encoder, encoder_only=self.stage.encoder_only_init)
        if self.stage.metric and cfg.head_start_depth:
            start_metric_head_at(model, cfg.head_start_depth)
        self.objective = self._objective(source)
        model.pretrained.grad_checkpointing = cfg.activation_checkpointing

        self.state = TrainState()
        ckpt = ray.train.get_checkpoint()
        restored = None
        if ckpt is not None:
            restored = _read_checkpoint(ckpt, cfg.encoder)
            self.state, model_state = restored[0], restored[1]
            model.load_state_dict(model_state, strict=True)
        self.raw_model = model.to(self.device)
        if cfg.compile:
            compile_model(self.raw_model)
        self.model = wrap_for_workers(self.raw_model, cfg.fsdp, self.device)
        self.optimizer = make_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.head_lr_multiplier, cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.steps, cfg.warmup_steps, cfg.lr_power)
        if restored is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, restored[2],
                                     options=StateDictOptions(full_state_dict=True))
            self.scheduler.load_state_dict(restored[3])
            set_rng_state(restored[4])
        self.ledger = ConsumptionLedger(self.state.position, resume_partial=cfg.deterministic)
        self.skipped_since_checkpoint = 0  # this worker's placeholders; state.data_skipped is the global total
        self.last_group = self.state.position.next_group

        self.protocol = (Protocol(cfg.min_depth, cfg.max_depth, "none") if self.stage.metric
                         else Protocol(cfg.val_min_depth, cfg.val_max_depth, "disparity"))
        self.val_rows = load_validation_rows(cfg.val_data, cfg.val_limit) if cfg.val_data else []
        self.val_per_rank = math.ceil(len(self.val_rows) / self.world)

        self.log = self.gauges = self.tracker = None
        if self.rank == 0:
            self.log = records.MetricsLog(cfg.output, self.state.history)  # appends to the history
            self.log.flush()  # drop rows of steps this run will redo
            self.gauges = records.Gauges(run_name, cfg.stage)
            if cfg.tracker != "none":
                self.tracker = records.Tracker(cfg.tracker, cfg.output, run_name, cfg.to_dict(), cfg.wandb_project)
            if restored is not None:
                log.info(f"[train] resumed at step {self.state.step} from the latest checkpoint; data from "
                         f"group {self.state.position.next_group} (skipping {len(self.state.position.skip)} "
                         f"finished groups after it)")

    # ------------------------------------------------------------------ setup

    def _objective(self, weights_source: str | None):
        cfg = self.cfg
        if not self.stage.predicts_depth:
            return MaskedImageObjective(cfg.mask_ratio, cfg.steps, cfg.ema_momentum)
        if self.stage.metric:
            return MetricObjective()
        frozen = None
        if self.stage.name == "student":
            uri = cfg.frozen_encoder or weights_source
            if uri and uri.lower() != "none":
                frozen = frozen_encoder(uri, cfg.encoder).to(self.device)
        return RelativeObjective(trim=cfg.trim, frozen_encoder=frozen, feature_weight=cfg.feature_weight,
                                 feature_margin=cfg.feature_margin, feature_layer=get_spec(cfg.encoder).layers[-1],
                                 gm_ramp_steps=cfg.gm_ramp_steps)

    # ------------------------------------------------------------------ data

    def _batches(self):
        import ray.train

        start = self.state.position
        if self.cfg.deterministic:
            it = self._own_stream()
        else:
            it = ray.train.get_dataset_shard("train")
        torch_batches = it.iter_torch_batches(batch_size=self.cfg.batch_size, drop_last=True, device=self.device,
                                              prefetch_batches=2)
        # Safety net: if the stream started before this checkpoint's position,
        # drop the groups it already trained on (nothing is dropped normally).
        # --deterministic also drops the rows of in-flight groups trained on
        # before the checkpoint (a prefix of each: its own stream is ordered).
        done = np.fromiter(start.skip, np.int64, len(start.skip))
        to_drop = dict(start.partial) if self.cfg.deterministic else {}

        def keep(batch):
            groups = batch["group"].cpu().numpy()
            mask = ~(np.isin(groups, done) | (groups < start.next_group))
            for i, g in enumerate(groups.tolist()):
                if mask[i] and to_drop.get(g, 0) > 0:
                    to_drop[g] -= 1
                    mask[i] = False
            return torch.from_numpy(mask).to(batch["group"].device)

        return rebatch(torch_batches, self.cfg.batch_size, keep)

    def _own_stream(self):
        """``--deterministic``: this worker's groups (``g % world == rank``) from
        the checkpoint's position, in order. The run's data errors go where
        the shared stream writes them."""
        import ray

        from depthlib.training import data as data_mod
        from depthlib.training.examples import ExampleSpec

        cfg = self.cfg
        spec = ExampleSpec(target=self.stage.target, crop=cfg.crop, flip=cfg.flip, color_jitter=cfg.color_jitter,
                           blur=cfg.blur, cutmix=cfg.cutmix, min_depth=cfg.min_depth, max_depth=cfg.max_depth)
        position = self.state.position
        end = self.plan.end_group(position, max(0, cfg.steps - self.state.step) * cfg.global_batch)
        ds = data_mod.train_dataset(self.plan_ref, self.plan, spec, position, end, cfg.data_cpus,
                                    storage.join(cfg.output, data_mod.ERRORS_DIR), self.s3,
                                    rank=self.rank, world=self.world)
        ds.context.execution_options.preserve_order = True
        return ds.iterator()

    # ------------------------------------------------------------------ loop

    def _micro_batches(self, batches):
        """The next ``--grad-accum`` batches as ``(normalised images, batch)``,
        their rows recorded as consumed (data position, bad-row count)."""
        for _ in range(self.cfg.grad_accum):
            batch = next(batches)
            images = normalize(batch["image"].float().div_(255.0))
            groups = batch["group"].cpu().numpy()
            self.ledger.consume(groups)
            self.last_group = max(self.last_group, int(groups.max()))
            self.skipped_since_checkpoint += int((batch["ok"] == 0).sum())
            yield images, {"target": batch["target"], "mask": batch["mask"].bool(), "region": batch["region"]}

    def run(self) -> None:
        import ray.train

        cfg = self.cfg
        if self.state.step >= cfg.steps:  # the final checkpoint exists; the outputs may not
            self._finish()
            ray.train.report({"step": self.state.step, "finished": 1})
            return
        if self.val_per_rank and not any(r.get("step") == 0 and "val_images" in r for r in self.state.history):
            # The starting point the learning verdict compares with (and a "before" picture).
            row = {"step": 0, "time": time.time(), **self.validate(0)}
            if "val_abs_rel" in row:
                row["val_layout_prior_abs_rel"] = self._layout_prior_abs_rel()
            self._report(row, checkpoint_due=False)
        batches = self._batches()
        window: dict[str, float] = defaultdict(float)
        window_images, t_window = 0, time.time()
        autocast = autocast_for(self.device, cfg.dtype)
        at_step = getattr(self.objective, "at_step", None)  # a weight schedule of the objective, if any
        while self.state.step < cfg.steps:
            self.model.train()
            if at_step:
                at_step(self.state.step)
            for terms in optimizer_step(self.model, self.objective, self.optimizer, self._micro_batches(batches),
                                        cfg.grad_accum, cfg.grad_clip, autocast):
                for k, v in terms.items():
                    window[k] += v
                window["n"] += 1
            window_images += cfg.grad_accum * cfg.batch_size
            self.scheduler.step()
            self.state.step += 1
            step = self.state.step
            final = step == cfg.steps
            checkpoint_due = final or step % cfg.checkpoint_every == 0
            validate_due = bool(self.val_per_rank) and (checkpoint_due or step % cfg.val_every == 0)
            if final or checkpoint_due or validate_due or step % cfg.log_every == 0:
                row = self._row(window, window_images, time.time() - t_window)
                if validate_due:
                    row.update(self.validate(step))
                if final and self.rank == 0:
                    self._add_verdict(row)
                self._report(row, checkpoint_due)
                window, window_images, t_window = defaultdict(float), 0, time.time()
        self._finish()

    def _add_verdict(self, row: dict) -> None:
        """The final row's learning flag (rank 0, which holds the history)."""
        verdict = learning_verdict(self.state.history + [row], self.cfg.learn_margin)
        if verdict is None:
            return
        row.update({"learned": int(verdict["learned"]), "learn_improvement": verdict["improvement"]})
        if not verdict["learned"]:
            prior = verdict["layout_prior"]
            log.warning(f"[train] NOT LEARNING: {verdict['basis']} went from {verdict['start']:.4f} to "
                        f"{verdict['last']:.4f} (improvement {verdict['improvement']}, margin "
                        f"{self.cfg.learn_margin}"
                        + (f"; the held-out set's image-blind layout prior scores {prior:.4f}" if prior else "")
                        + f"); see {storage.redact(self.cfg.output)}/curves.png")

    def _row(self, window: dict[str, float], images: int, seconds: float) -> dict:
        """The log row of the steps since the last report, averaged over all workers."""
        keys = sorted(k for k in window if k != "n")
        sums = _all_reduce_sum([window[k] for k in keys] + [window["n"], float(images)], self.device)
        n, images_all = sums[-2], sums[-1]
        row = {"step": self.state.step, "time": time.time(),
               "epoch": round(_all_reduce_max(self.last_group, self.device) / self.plan.groups_per_epoch, 3),
               "lr": self.optimizer.param_groups[0]["lr"], "lr_head": self.optimizer.param_groups[1]["lr"],
               "images_per_s": images_all / max(seconds, 1e-9),
               "data_skipped": self.state.data_skipped + int(_all_reduce_sum(
                   [float(self.skipped_since_checkpoint)], self.device)[0])}
        row.update({k: s / max(n, 1) for k, s in zip(keys, sums)})
        return row

    # ------------------------------------------------------------------ validation

    def _layout_prior_abs_rel(self) -> float:
        """AbsRel of the validation set's layout prior (the image-blind map to beat)."""
        from depthlib.evaluation.baselines import layout_prior_scores

        decoded = [r.decode() for r in self.val_rows]
        return layout_prior_scores([d for _, d, _ in decoded], [v for _, _, v in decoded], self.protocol)["abs_rel"]

    @torch.no_grad()
    @torch.compiler.set_stance("force_eager")  # --compile: held-out images of other sizes would recompile
    def validate(self, step: int) -> dict:
        """Validation metrics (mean over all held-out images, all workers) with the
        evaluation protocol; rank 0 also draws ``samples/step-<step>.png``.
        Pretraining: :meth:`_validate_features` instead."""
        if not self.stage.predicts_depth:
            return self._validate_features(step)
        self.raw_model.eval()
        names = ("abs_rel", "d1", "d2", "d3", "rmse", "silog")
        sums, count = [0.0] * len(names), 0
        pictures = []
        # Every rank runs the same number of forward passes (FSDP gathers weights in each).
        for i in range(self.val_per_rank):
            index = i * self.world + self.rank
            padding = index >= len(self.val_rows)  # keeps the passes equal; its result is dropped
            image, depth, valid = self.val_rows[0 if padding else index].decode()
            pred = predict_images(self.model if self.cfg.fsdp else self.raw_model, [image], input_size=self.cfg.crop,
                                  dtype=self.cfg.dtype, sizes=[depth.shape])[0]
            if padding:
                continue
            gt, mask = torch.from_numpy(depth), torch.from_numpy(valid)
            if not bool(valid_pixels(gt, mask, self.protocol).any()):
                continue
            m = score(torch.from_numpy(pred)[None], gt[None], mask[None], self.protocol)
            sums = [s + float(m[k][0]) for s, k in zip(sums, names)]
            count += 1
            if self.rank == 0 and len(pictures) < self.cfg.samples:
                pictures.append((image, pred, depth, valid))
        totals = _all_reduce_sum(sums + [float(count)], self.device)
        n = totals[-1]
        if self.rank == 0 and pictures:
            grid = records.samples_grid(*map(list, zip(*pictures)), metric=self.stage.metric)
            from depthlib.visualize import to_png

            storage.write_bytes(storage.join(self.cfg.output, "samples", f"step-{step:08d}.png"), to_png(grid))
        if n == 0:
            return {}
        return {f"val_{k}": s / n for k, s in zip(names, totals)} | {"val_images": int(n)}

    def _validate_features(self, step: int) -> dict:
        """Pretraining's validation on the held-out images (as the depth stages
        preprocess them, shorter side ``--crop``): the masked-patch loss with
        masks fixed by image index (the same every validation, so values
        compare across steps), and ``val_feature_spread`` of the unmasked
        features over all held-out images (0 = collapsed). Rank 0 draws
        ``samples/step-<step>.png``: each image beside the PCA colours of its
        patch features (:func:`depthlib.visualize.features_grid`)."""
        from depthlib.losses import feature_spread, random_patch_masks
        from depthlib.models.masked_image import masked_loss
        from depthlib.models.specs import PATCH_SIZE
        from depthlib.transforms import preprocess

        model = self.model if self.cfg.fsdp else self.raw_model
        self.raw_model.eval()
        loss_sum, count, pooled, pictures = 0.0, 0, [], []
        for i in range(self.val_per_rank):
            index = i * self.world + self.rank
            padding = index >= len(self.val_rows)  # every rank runs the same passes (FSDP)
            image, _, _ = self.val_rows[0 if padding else index].decode()
            x = preprocess(image, self.cfg.crop)[None].to(self.device)
            gh, gw = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
            masks = random_patch_masks(1, gh * gw, self.cfg.mask_ratio,
                                       generator=torch.Generator().manual_seed(index)).to(self.device)
            pixels, _ = model(x, masks)
            tokens = model.features(x)
            if padding:
                continue
            loss_sum += float(masked_loss(self.raw_model, pixels, x, masks))
            count += 1
            pooled.append(tokens.float().mean(1).cpu())
            if self.rank == 0 and len(pictures) < self.cfg.samples:
                pictures.append((image, tokens[0].float().reshape(gh, gw, -1).cpu().numpy()))
        totals = _all_reduce_sum([loss_sum, float(count)], self.device)
        gathered = [p for part in _all_gather(pooled) for p in part]
        if self.rank == 0 and pictures:
            from depthlib.visualize import features_grid, to_png

            grid = features_grid([p[0] for p in pictures], [p[1] for p in pictures])
            storage.write_bytes(storage.join(self.cfg.output, "samples", f"step-{step:08d}.png"), to_png(grid))
        if totals[1] == 0:
            return {}
        spread = float(feature_spread(torch.cat(gathered)[:, None])) if len(gathered) > 1 else float("nan")
        return {"val_mim": totals[0] / totals[1], "val_feature_spread": spread, "val_images": int(totals[1])}

    # ------------------------------------------------------------------ reports and checkpoints

    def _full_states(self, optimizer: bool = True) -> tuple[dict, dict | None]:
        """Model (and optimiser) state dicts, whole, on CPU. A collective under
        FSDP: every rank calls it; rank 0 gets the states."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=options),
                get_optimizer_state_dict(self.model, self.optimizer, options=options) if optimizer else None)

    def _report(self, row: dict, checkpoint_due: bool) -> None:
        import ray.train

        if "val_abs_rel" in row:
            best = self.state.best_val_abs_rel
            self.state.best_val_abs_rel = row["val_abs_rel"] if best is None else min(best, row["val_abs_rel"])
        if self.rank == 0:
            self.log.add(row)
            self._print(row)
            self.gauges.set(row)
            if self.tracker:
                self.tracker.log(row)
        if not checkpoint_due:
            ray.train.report(row)
            return
        self.state.position = self.ledger.merge(_all_gather(self.ledger.counts), self.plan.group_rows)
        self.state.data_skipped, self.skipped_since_checkpoint = row["data_skipped"], 0
        model_state, optim_state = self._full_states()
        directory = None
        if self.rank == 0:
            directory = tempfile.mkdtemp(prefix="depthlib-ckpt-")
            write_checkpoint_dir(directory, model_state=model_state, encoder=self.cfg.encoder,
                                 optimizer_state=optim_state, scheduler_state=self.scheduler.state_dict(),
                                 state=self.state, config=self.cfg.to_dict())
            self.log.flush()
            if self.tracker:
                self.tracker.flush()
            self._curves()
        try:
            checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
            ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"step-{self.state.step:08d}")
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        if self.cfg.fail_at_step == self.state.step:
            self._inject_failure()

    def _inject_failure(self) -> None:
        """``--fail-at-step K``: once per output, every worker raises right after the
        checkpoint at step K is registered, so Ray Train restarts the worker group
        from it (FailureConfig). Exercises recovery on a real cluster."""
        import ray.train.collective

        marker = storage.join(self.cfg.output, FAILURE_MARKER)
        ray.train.collective.barrier()  # every rank's report is processed before anyone fails
        if storage.exists(marker):
            return  # the drill already happened
        ray.train.collective.barrier()  # every rank looked before rank 0 writes the marker
        if self.rank == 0:
            storage.write_bytes(marker, str(self.state.step).encode())
        raise RuntimeError(f"--fail-at-step {self.state.step}: injected worker failure")

    def _print(self, row: dict) -> None:
        terms = " ".join(f"{k} {row[k]:.4f}" for k in ("loss", "ssi", "gm", "feat", "silog", "mim", "feature_spread")
                         if k in row)
        line = f"[train] step {row['step']}/{self.cfg.steps} {terms}"
        if "lr" in row:  # not in the step-0 row (validation only)
            line += f" lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s epoch {row['epoch']:.2f}"
        if "val_abs_rel" in row:
            line += f" | val AbsRel {row['val_abs_rel']:.4f} d1 {row['val_d1']:.4f} ({row['val_images']} images)"
            if "val_layout_prior_abs_rel" in row:
                line += f"; its image-blind layout prior {row['val_layout_prior_abs_rel']:.4f}"
        if "val_mim" in row:
            line += (f" | held-out masked loss {row['val_mim']:.4f}, feature spread "
                     f"{row['val_feature_spread']:.4f} ({row['val_images']} images)")
        if row.get("data_skipped"):
            line += f" | {row['data_skipped']} bad rows skipped"
        log.info(line)

    def _curves(self) -> None:
        png = records.curves_png(self.state.history, f"{self.cfg.stage} {self.cfg.encoder} - {self.run_name}")
        storage.write_bytes(storage.join(self.cfg.output, records.CURVES_FILE), png)

    def _finish(self) -> None:
        """``model.pth`` (released format; pretraining: also ``encoder.pth``) and the run state, by rank 0."""
        from depthlib.models import released_bytes

        model_state, _ = self._full_states(optimizer=False)
        if self.rank != 0:
            return
        storage.write_bytes(storage.join(self.cfg.output, FINAL_MODEL), released_bytes(model_state, self.cfg.encoder))
        if not self.stage.predicts_depth:
            import io

            from depthlib.models.masked_image import encoder_release_state

            buf = io.BytesIO()
            torch.save(encoder_release_state(model_state, self.cfg.encoder), buf)
            storage.write_bytes(storage.join(self.cfg.output, FINAL_ENCODER), buf.getvalue())
        write_run_state(self.cfg.output, {"finished_step": self.state.step, "best_val_abs_rel":
                                          self.state.best_val_abs_rel, "data_skipped": self.state.data_skipped,
                                          "final": self.state.history[-1] if self.state.history else {},
                                          "learning": learning_verdict(self.state.history, self.cfg.learn_margin)})
        if self.tracker:
            self.tracker.close()
        log.info(f"[train] finished at step {self.state.step}: {storage.redact(self.cfg.output)}/{FINAL_MODEL}")


def _read_checkpoint(ckpt, encoder: str) -> tuple:
    """:func:`read_checkpoint_dir` of a Ray checkpoint, read in place on a
    local filesystem, else from this worker's own download.

    Not ``Checkpoint.as_directory()``: for a remote checkpoint it shares one
    download directory among the workers of a node, and one worker can delete
    it or still be writing it while another reads (seen: two workers resuming
    from S3, "PytorchStreamReader failed reading file")."""
    import pyarrow.fs

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        return read_checkpoint_dir(ckpt.path, encoder)
    with tempfile.TemporaryDirectory(prefix="depthlib-checkpoint-") as d:
        return read_checkpoint_dir(ckpt.to_directory(d), encoder)


def train_worker(loop_config: dict) -> None:
    """Ray Train's per-worker function: ``{"config": TrainConfig fields, "plan": ObjectRef, "run_name", "s3"}``."""
    import ray

    storage.set_default_s3(loop_config.get("s3"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # As many torch threads as CPUs Ray gave the worker: an OMP_NUM_THREADS
    # inherited from the driver's shell would oversubscribe the node's cores
    # (measured on 2 cores, tiny teacher, 2 workers: 30 img/s with 2 threads each, 115 with 1).
    torch.set_num_threads(int(loop_config.get("torch_threads", torch.get_num_threads())))
    cfg = TrainConfig(**loop_config["config"])
    plan = ray.get(loop_config["plan"])
    Trainer(cfg, plan, loop_config["run_name"], loop_config["plan"], loop_config.get("s3")).run()
