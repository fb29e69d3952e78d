"""DeepSpeed engine setup (beside the loop, not in the model): process group, ZeRO config, AdamW, LR.

CPU: `DS_ACCELERATOR=cpu`, gloo, fp32 (bf16 autocast is ~10x slower on this CPU, STACK.md).
GPU: nccl, bf16. Launcher-less single processes get the rendezvous variables set here (DeepSpeed
otherwise tries MPI discovery); under torchrun / the deepspeed launcher they are already set, and a
Ray Train worker (orchestrator, engine.workers > 1) also finds the process group initialised.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from core.net import free_port
from trainer.config import EngineConfig, TrainConfig
from trainer.plan import decay_steps
from trainer.model.transformer import Block

QUIET_LOGGERS = ("DeepSpeed", "deepspeed", "torch.distributed")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype                      # autocast dtype (fp32 = no autocast)
    backend: str                            # torch.distributed backend

    @property
    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def placement(cfg: EngineConfig) -> Placement:
    cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("engine.device='cuda' but no CUDA device is available")
    if cuda:
        # the orchestrator's Ray runtime env says "cpu" for every worker; a GPU placement overrides it
        # (read once, when DeepSpeed picks its accelerator at first use)
        os.environ["DS_ACCELERATOR"] = "cuda"
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda)
    return Placement(device, torch.bfloat16 if bf16 else torch.float32, "nccl" if cuda else "gloo")


def quiet_logs() -> None:
    """DeepSpeed logs config dumps and warnings at INFO on every init; keep WARNING+ only."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="deepspeed")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # a compiled loss (compiled_loss) graph-breaks at DeepSpeed's forward hooks (their timers call
    # time.time); dynamo warns about that once per process and job: expected, not actionable
    warnings.filterwarnings("ignore", message="Dynamo does not know how to trace the builtin")


def init_distributed(place: Placement) -> tuple[int, int]:
    """(rank, world_size). Sets single-process rendezvous variables if no launcher did.

    Ray Train (TorchConfig) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT and calls
    init_process_group before the worker's loop runs: that group is used as it is (DeepSpeed's
    engine adopts an initialised torch.distributed group; no MPI discovery, which only runs when
    those variables are missing), provided its backend is the placement's."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if place.device.type == "cuda" else "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    quiet_logs()
    import deepspeed                                   # after DS_ACCELERATOR is set
    if "RANK" not in os.environ and not torch.distributed.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        # One process needs no rendezvous: an in-process store instead of env:// whose TCPStore
        # would listen on MASTER_PORT on every interface ('::', whatever MASTER_ADDR says), open to
        # the network for the whole run (tests/test_exposure.py). DeepSpeed adopts the group.
        torch.distributed.init_process_group(place.backend, store=torch.distributed.HashStore(),
                                             rank=0, world_size=1)
    # LOCAL_SIZE is deliberately left unset. DeepSpeed's CPU accelerator would read it in
    # device_count() instead of running `numactl --hardware` once per ZeRO-3 step (~0.15 ms here),
    # but its shm comm op reads it too: LOCAL_SIZE == world size makes every process create a 69 MB
    # /dev/shm segment that is never removed (and a 2-rank torchrun run aborted once with it set).
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=place.backend, verbose=False)
    elif place.backend not in torch.distributed.get_backend():
        raise ValueError(f"engine.device: this job runs on {place.device.type} ({place.backend}) but "
                         f"the process group was initialised with {torch.distributed.get_backend()}")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """LR multiplier per step: linear warmup (train.warmup_steps, else warmup_frac of the steps),
    then cosine to min_lr_ratio, WSD (stable, then a linear decay over the last decay_frac of
    steps) or constant (a trajectory trunk: its WSD branches share every step before their decay)."""
    warm = cfg.warmup_steps or max(1, round(cfg.warmup_frac * total_steps))
    floor = cfg.min_lr_ratio

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    def wsd(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        decay_start = total_steps - decay_steps(cfg, total_steps)
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * (step - decay_start + 1) / (total_steps - decay_start)

    def constant(step: int) -> float:
        return (step + 1) / warm if step < warm else 1.0

    return {"cosine": cosine, "wsd": wsd, "constant": constant}[cfg.schedule]


# ZeRO-3 cost on this CPU (bench/bench_train.py: 1 process, 2 threads, batch 8 x 128, fp32). Every
# step ZeRO-3 re-partitions the gradients and steps the optimizer on flat partitions (a few extra
# passes over the parameters) and runs Python hooks around each module it fetches parameters for;
# at world size 1 the hooks, not the gathers, are what costs. Step time over a plain PyTorch loop,
# three runs on a shared, loaded machine (ZeRO-0: +0-8%, except +14% once at L2-d32):
#                     L2-d32  L2-d64       L3-d96       L4-d128      L5-d160  L6-d256
#   leaf blocks       +44%    +25/33/29%   +15/18/21%   +15/12/16%   +11%     +7/15/12%
#   per-module hooks  +69%    +43/42/44%   +22/23/24%   +18/17/22%   +15%     +12/26/15%
# Crossover: with leaf blocks (EngineConfig.zero3_leaf_blocks, the default) ZeRO-3 costs more than
# 20% below width ~96 (L3-d96, 0.33M non-embedding parameters and 2.8 GFLOP per step, sits on the
# line), a fixed ~4-7 ms per step against the compute; with per-module hooks it was below ~128.
# Measured and left alone: persistence threshold (all parameters resident, i.e. no gathers at all:
# no gain at world size 1), max live / reuse distance (models below 1e7 elements already stay
# gathered from forward to backward), overlap_comm and contiguous_gradients (no effect on CPU, which
# has no side streams), memory_efficient_linear=False (no measurable gain, and it would keep every
# gathered weight alive until backward in multi-process runs). stage3_module_granularity_threshold
# (automatic leaves) at 1e9 flagged the whole Transformer as one leaf, and backward then failed.
def ds_config(train: TrainConfig, eng: EngineConfig, place: Placement, world: int) -> dict:
    if train.batch_size % world:
        raise ValueError(f"train.batch_size={train.batch_size} must divide over {world} ranks")
    zero: dict = {"stage": eng.zero_stage}
    if eng.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=eng.persistence_threshold,
                    stage3_prefetch_bucket_size=eng.prefetch_bucket_size,
                    stage3_max_live_parameters=max(eng.prefetch_bucket_size, 10**7),
                    stage3_gather_16bit_weights_on_model_save=False)
        if eng.zero3_leaf_blocks:
            # DeepSpeed matches leaf classes by name or fully qualified name (utils/z3_leaf_module.py)
            zero["leaf_module"] = {"classes": [f"{Block.__module__}.{Block.__qualname__}"]}
    return {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0 if torch_clips(eng, place) else train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": place.dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


def torch_clips(eng: EngineConfig, place: Placement) -> bool:
    """Whether the job clips gradients itself (EngineConfig.lean) rather than DeepSpeed: ZeRO-0 in
    fp32 only (ZeRO-1/2/3 hold partitioned gradients; in bf16 DeepSpeed clips its fp32 copies)."""
    return eng.lean and eng.zero_stage == 0 and place.dtype == torch.float32


def build_optimizer(model: torch.nn.Module, train: TrainConfig, total_steps: int, impl: str = "fused"):
    """(AdamW, LambdaLR) of a run: weight decay on matrices only, the implementation `impl`
    (EngineConfig.adamw), the LR schedule of `lr_lambda`. The engine's optimizer, and the bench's
    plain reference loop's."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]     # norms, biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train.lr, betas=(train.beta1, train.beta2),
                            foreach=impl == "foreach", fused=impl == "fused" or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train, total_steps))


def build_engine(model: torch.nn.Module, train: TrainConfig, eng: EngineConfig, place: Placement,
                 world: int, total_steps: int):
    """deepspeed.initialize with a client torch AdamW (nothing to compile) and a LambdaLR that the
    engine steps and checkpoints."""
    import deepspeed
    opt, sched = build_optimizer(model, train, total_steps, eng.adamw)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(train, eng, place, world))
    if eng.lean and eng.zero_stage == 0 and world == 1:
        engine.enable_backward_allreduce = False        # one rank: nothing to all-reduce
    return engine


def compiled_loss(threads: int = 1):
    """The training loss (objective.loss) under torch.compile (inductor), for a job to call with
    the engine's module instead of the engine (EngineConfig.compile, ZeRO stage 0 only).

    Model and loss compile as one graph (between the graph breaks of data-dependent shapes, such
    as masked diffusion's scored positions), so the backward is one compiled graph too. The engine
    is bypassed for the forward only: at ZeRO-0 its forward adds nothing but timers and the output
    hooks that start them; engine.backward (loss scaling, the data-parallel gradient all-reduce)
    and engine.step run as before. ZeRO-1/2/3 hook the optimizer or the parameters into the
    forward, hence stage 0 only. Dynamo's in-memory caches are dropped first: a reused worker runs
    one job after another, and each new model would otherwise count against dynamo's per-function
    recompile limit until it silently fell back to eager. Inductor's on-disk cache survives.
    `threads`: the CPU threads the job owns (EngineConfig.threads), its compile workers too."""
    import torch._dynamo
    import torch._inductor.config
    from trainer.job import objective
    torch._dynamo.reset()
    # inductor compiles in a pool of processes, one per CPU by default: a job owns `threads` of them
    torch._inductor.config.compile_threads = max(1, threads)
    return torch.compile(objective.loss)


def extensions_dir() -> str:
    """Where DeepSpeed JIT-builds its ops: inside this interpreter's environment (the venv), not the
    user-wide ~/.cache/torch_extensions. Two checkouts sharing one build directory rebuild it each
    time the other ran (the build is keyed by the sources' paths), and a process killed mid-build
    leaves a `lock` file there on which every later DeepSpeed start waits forever (seen twice here:
    a test's subprocess timeout during another venv's rebuild hung `make test`). Per venv, the one
    build is `make install`'s warm-up, so no trial or test compiles. TORCH_EXTENSIONS_DIR wins."""
    return str(Path(sys.prefix) / "torch_extensions")


def warm_up() -> None:
    """Build DeepSpeed's CPU comm op once (65-80 s the first time, cached in extensions_dir())
    by initialising a one-process gloo group, so no test or trial pays for the compile."""
    from trainer.config import EngineConfig
    init_distributed(placement(EngineConfig(device="cpu")))
    # A one-process job adopts an in-process group (no deepspeed.init_distributed), so the op is
    # built at the first deepspeed.initialize instead: build it here, where the engine would.
    from deepspeed.comm.torch import build_shm_op
    build_shm_op()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:] != ["--warm-up"]:
        sys.exit("usage: python -m trainer.job.engine --warm-up")
    warm_up()
    print("DeepSpeed CPU ops ready")
