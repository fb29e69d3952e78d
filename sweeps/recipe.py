"""Recipes: every opinionated choice of the sweeps, one frozen `Recipe` per preset (RECIPE).

A recipe says *which* runs a study makes and how each trains: FLOP budgets, ladder sizes per
budget around the compute-optimal one, families and knob values, the read-off (one run per point,
or one trajectory trunk per size: Grid.readoff), batch, sequence length, LR, warmup, evaluations,
engine, vocabulary. FLOP arithmetic is core/flops.py, building the configs sweeps/grid.py and
sweeps/trajectory.py (MECHANICS). `# RECIPE:` comments give a choice's reason where it is not
obvious, docs/recipe_calibration.md the measurements; sweeps/calibration.py is the measured CPU
throughput the presets' time limits are checked with.

Presets: LAPTOP (the default: 2 CPU cores, <= 60 min for compute_bound), QUICK (<= 15 min,
autoregressive + masked), CLUSTER (GPUs, budgets 1e17-1e20), and two on LAPTOP's scale under a
paper's definitions (sweeps/definitions.py): VONRUETTE2025 (GIDD's five noise types) and SAHOO2026
(AR, MDLM, Duo, Eso-LM). Every preset has the same sweeps, in the same order
(tests/test_sweeps.py); a new sweep is one more `Sweep` record.
"""
from __future__ import annotations

import dataclasses

from trainer.config import EngineConfig
from sweeps.definitions import SAHOO2026, VONRUETTE2025
from sweeps.spec import Grid, Recipe, Search, Shape, Sweep  # noqa: F401  (re-exported)
from trainer.families.registry import FAMILIES

ALL_FAMILIES = tuple(FAMILIES)   # every registered family, in registry order (the baseline first)


# ------------------------------------------------------------------------------------------------
# LAPTOP: 2 CPU cores, two one-thread trials at a time.
# ------------------------------------------------------------------------------------------------
CPU_ENGINE = EngineConfig(device="cpu", precision="fp32", threads=1,  # RECIPE: 2 slots x 1 thread
                          zero_stage=0)  # RECIPE: 1 rank per trial; ZeRO-3 costs 1.43x (see docs/)

LAPTOP_SHAPE = Shape(
    vocab_size=512,            # RECIPE: 2048 barely lets diffusion learn at laptop budgets (STACK)
    seq_len=128,               # RECIPE
    batch_size=8,              # RECIPE: 8 x 128 was cheaper per token and better per FLOP (STACK)
    lr=3e-3,                   # RECIPE: what tests/test_learning.py trains every family with
    lr_ref_width=128,          # RECIPE: constant LR over the laptop widths
    warmup_frac=0.05,          # RECIPE
    evals=8, eval_seqs=64, eval_t_repeats=2,   # RECIPE: ~1-5% of a run's time
    min_steps=300,             # RECIPE (STACK)
    engine=CPU_ENGINE,
)

SMOKE_SHAPE = dataclasses.replace(   # RECIPE: seconds per run (tests, end-to-end checks)
    LAPTOP_SHAPE, seq_len=64, evals=4, eval_seqs=16, eval_t_repeats=1, min_steps=30)

# 2512.10858's five noise types: mixing shift b in {-1000, -2, 0, 2, 1000}, i.e. uniform shares
# sigmoid(b) = 0, 0.119, 0.5, 0.881, 1 at log-SNR 0 (b = -1000 is masked noise, 1000 uniform, exactly).
GIDD_SHIFTS = (-1000.0, -2.0, 0.0, 2.0, 1000.0)

# RECIPE: tokens per parameter where each family's isoFLOP minimum sat in three real laptop
# studies and probes at the grid ends (docs/recipe_calibration.md); masked and esolm (MDLM's
# loss at alpha_0 = 1) get 6 sizes, uniform / hybrid 5: a flat bottom has a higher point each side.
LAPTOP_TOKENS_PER_PARAM = (("autoregressive", 40.0), ("masked", 600.0), ("uniform", 400.0),
                           ("hybrid", 400.0), ("esolm", 600.0))
LAPTOP_SIZES_PER_BUDGET = (("masked", 6), ("uniform", 5), ("hybrid", 5), ("esolm", 6))

LAPTOP_BUDGETS = (1.33e11, 2.37e11, 4.21e11, 7.49e11, 1.33e12)   # RECIPE: 1.33e11 x 1.778^k

LAPTOP = Recipe(
    name="laptop",
    shape=LAPTOP_SHAPE,
    sweeps=(
        # IsoFLOP study, one run per (family, size) read off at every budget it serves
        # (readoff "constant": constant LR, a cooled branch per budget measures each family's
        # cooldown factor). RECIPE: 5 budgets 1.78x apart spanning 10x from 1.5e11, 3 sizes per
        # budget centred per family (each trunk also read off at the study's lower budgets it
        # reaches in >= min_steps), every family (the hybrid at b = 0, p_u = 0.5): ~50 min on
        # the slower 2-core machine (AVX2, ~143 GFLOP/s), as its dry run measures (57 from 1.5e11).
        Sweep(name="compute_bound",
              grid=Grid(budgets=LAPTOP_BUDGETS, families=ALL_FAMILIES, knobs=(0.0,),
                        sizes_per_budget=3, tokens_per_param=LAPTOP_TOKENS_PER_PARAM,
                        readoff="constant")),
        # Token-bound regime (2512.10858; Muennighoff et al. 2023): a fixed pool of U unique tokens
        # (train.data_pool_tokens) repeated for as many epochs as the budget needs. RECIPE: two
        # pools, 32,768 and 131,072 tokens (~70 / 270 KB of text), 4 fixed sizes, one constant-LR
        # trunk per (family, pool, size) read off at 5 budgets 2x apart: 0.4 to 140 epochs, so
        # R* (analysis/data_constrained.py) is identified whether it is ~15 (AR) or hundreds
        # (masked diffusion, Prabhudesai et al. 2025); ~20 min on this 2-core machine.
        Sweep(name="data_bound",
              grid=Grid(budgets=(1e11, 2e11, 4e11, 8e11, 1.6e12),
                        families=("autoregressive", "masked", "uniform"),
                        sizes=("L2-d32", "L2-d48", "L2-d64", "L3-d80"),
                        pool_tokens=(2**15, 2**17), readoff="constant")),
        # The hybrid's mixing shift b from masked (-1000) to uniform (1000) at fixed sizes and
        # budgets. RECIPE: one budget, 3 sizes, 2512.10858's five noise types; esolm at its trained
        # alpha_0 = 1 alongside (one run per size, no knob).
        Sweep(name="noise_sweep",
              grid=Grid(budgets=(1.6e12,), families=("hybrid", "esolm"), knobs=GIDD_SHIFTS,
                        sizes_per_budget=3)),
        # Base configs (size x budget x family) of the LR x batch search; the points come from
        # Optuna over `sweeps.search_space("hparams")` (the orchestrator applies them).
        Sweep(name="hparams",
              grid=Grid(budgets=(1e12,), families=("autoregressive", "masked"), sizes_per_budget=2),
              search=Search(lr=(1e-3, 3e-2), batch_sizes=(4, 8, 16, 32), num_samples=8)),
        # The same question as a grid (2512.10858's design, gidd-easydel
        # notebooks/critical_batch_size2.ipynb): every (size, batch, LR) one constant-LR trunk
        # (gidd-easydel notebooks/utils.py: constant LR, the loss read off the curve) read off at
        # each budget, so each (N, D) gets a batch x LR surface (analysis/hp_laws.py). RECIPE:
        # 2 sizes x 3 budgets = 6 (N, D) spanning 7.6x in D; batches 2-16 x 128 tokens bracket
        # B* = 3.3e-3 D^0.82 (~250-1300 tokens here); LRs 1.5e-3 ... 1.1e-2 around LAPTOP's 3e-3.
        Sweep(name="hparams_grid",
              grid=Grid(budgets=(2.5e11, 4.33e11, 7.5e11), families=("autoregressive", "masked"),
                        sizes=("L2-d16", "L2-d32"), batch_sizes=(2, 4, 8, 16),
                        lrs=(1.5e-3, 4e-3, 1.1e-2), readoff="constant")),
        # Seconds per run, for tests and end-to-end checks. RECIPE: 1.65e11 = 3-8 s of training,
        # enough that the slots' ~4-5 s fixed start-up does not dominate (bench/bench_sweep.py).
        Sweep(name="smoke",
              grid=Grid(budgets=(1.65e11,), families=("autoregressive", "masked"),
                        sizes=("L2-d24", "L2-d32", "L2-d48")),
              shape=SMOKE_SHAPE),
    ),
)

# ------------------------------------------------------------------------------------------------
# QUICK: <= 15 minutes on the laptop; autoregressive and masked, budgets below LAPTOP's.
# ------------------------------------------------------------------------------------------------
QUICK = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",     # RECIPE: LAPTOP's design, its 4 lower budgets, AR + MDLM
          grid=Grid(budgets=LAPTOP_BUDGETS[:4], families=("autoregressive", "masked"),
                    sizes_per_budget=3, tokens_per_param=LAPTOP_TOKENS_PER_PARAM,
                    readoff="constant")),
    Sweep(name="data_bound",
          grid=Grid(budgets=(3.2e11, 6.4e11, 1.28e12), families=("autoregressive", "masked"),
                    sizes_per_budget=3, pool_tokens=2**17)),
    Sweep(name="noise_sweep",
          grid=Grid(budgets=(6.4e11,), families=("hybrid",),
                    knobs=(-1000.0, 0.0, 1000.0), sizes_per_budget=2)),   # masked, p_u 0.5, uniform
    Sweep(name="hparams",
          grid=Grid(budgets=(3.2e11,), families=("autoregressive", "masked"), sizes_per_budget=2),
          search=Search(lr=(1e-3, 3e-2), batch_sizes=(4, 8, 16), num_samples=4)),
    name="quick",
)   # smoke: LAPTOP's

# ------------------------------------------------------------------------------------------------
# CLUSTER: GPUs, budgets 1e17-1e20. Needs a real corpus: --set 'data.paths=["/data/..."]' (the
# packaged ~26 MB would be repeated thousands of times at these budgets).
# ------------------------------------------------------------------------------------------------
GPU_ENGINE = EngineConfig(device="auto", precision="bf16", zero_stage=3)   # RECIPE

CLUSTER_SHAPE = Shape(
    vocab_size=32768,          # RECIPE: a standard LM vocabulary once data is plentiful
    seq_len=1024,              # RECIPE
    batch_size=256,            # RECIPE: 262,144 tokens per step; >= 500 steps at 1e17
    lr=3e-3, lr_ref_width=256,  # RECIPE: 1.5e-3 at d512 ... 3e-4 at d2560
    warmup_frac=0.02,          # RECIPE: thousands of steps; 2% is still hundreds
    evals=10, eval_seqs=512, eval_t_repeats=4,   # RECIPE: 0.5M validation tokens per evaluation
    min_steps=500,
    engine=GPU_ENGINE,
)

CLUSTER = Recipe(
    name="cluster",
    shape=CLUSTER_SHAPE,
    sweeps=(
        # RECIPE: half a decade apart, 5 sizes each (2 below f*, 3 above): f* = 1.7e8 ... 5.5e9
        # FLOPs/token, L6-d256 .. L36-d2560 at vocab 32768, T 1024; LAPTOP's constant read-off
        # (one trunk per family and size): 215 points for 2.9e21 FLOPs, 27% less than one run
        # per point (a decade apart, 4 budgets, one run per point: 100 points for 2.8e21).
        Sweep(name="compute_bound",
              grid=Grid(budgets=(1e17, 3.16e17, 1e18, 3.16e18, 1e19, 3.16e19, 1e20),
                        families=ALL_FAMILIES, knobs=(0.0,), sizes_per_budget=5,
                        readoff="constant")),
        Sweep(name="data_bound",
              grid=Grid(budgets=(1e18, 1e19, 1e20),
                        families=("autoregressive", "masked", "uniform"),
                        sizes_per_budget=3, pool_tokens=2**30)),   # RECIPE: 1.07B unique tokens
        Sweep(name="noise_sweep",
              grid=Grid(budgets=(1e19,), families=("hybrid", "esolm"), knobs=GIDD_SHIFTS,
                        sizes_per_budget=3)),
        Sweep(name="hparams",
              grid=Grid(budgets=(1e17,), families=("autoregressive", "masked"), sizes_per_budget=2),
              search=Search(lr=(1e-4, 1e-2), batch_sizes=(64, 128, 256, 512), num_samples=24)),
        Sweep(name="hparams_grid",   # RECIPE: 3 sizes x 3 budgets a half decade apart
              grid=Grid(budgets=(1e17, 3.16e17, 1e18), families=("autoregressive", "masked",
                                                                 "uniform"),
                        sizes=("L6-d256", "L12-d512", "L18-d768"), batch_sizes=(32, 64, 128, 256, 512),
                        lrs=(3e-4, 1e-3, 3e-3, 1e-2), readoff="constant")),
        dataclasses.replace(LAPTOP.sweep("smoke"),   # the GPU path, in seconds
                            shape=dataclasses.replace(SMOKE_SHAPE, engine=GPU_ENGINE)),
    ),
)

# ------------------------------------------------------------------------------------------------
# The papers' definitions at LAPTOP's scale. Their budgets count FLOPs their way, which buys more
# tokens per budget than LAPTOP's (neither convention counts attention and the head as ours does):
# RECIPE: vonruette2025's 5 noise types x 3 budgets from 4e11 and sahoo2026's 3 families x LAPTOP's
# budgets stay within LAPTOP's hour (tests/test_sweeps.py estimates them like LAPTOP).
# ------------------------------------------------------------------------------------------------
VONRUETTE2025_RECIPE = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",
          grid=Grid(budgets=(4e11, 5.33e11, 7.1e11), families=("autoregressive", "hybrid"),
                    knobs=GIDD_SHIFTS, sizes_per_budget=4,
                    tokens_per_param=LAPTOP_TOKENS_PER_PARAM)),
    name="vonruette2025", definitions=VONRUETTE2025)   # noise_sweep: LAPTOP's, the same five b

# RECIPE: its four families at LAPTOP's sizes; budgets 4/3 apart from 5e11 of its FLOPs (LAPTOP's
# 6e11 ... 1.43e12 with Eso-LM added would estimate 54 min against the 48 allowed).
SAHOO2026_RECIPE = LAPTOP.with_sweeps(
    Sweep(name="compute_bound",
          grid=Grid(budgets=(5e11, 6.67e11, 8.89e11, 1.185e12),
                    families=("autoregressive", "masked", "uniform", "esolm"), sizes_per_budget=4,
                    family_sizes_per_budget=LAPTOP_SIZES_PER_BUDGET,
                    tokens_per_param=LAPTOP_TOKENS_PER_PARAM)),
    name="sahoo2026", definitions=SAHOO2026)

PRESETS: dict[str, Recipe] = {r.name: r for r in (LAPTOP, QUICK, CLUSTER, VONRUETTE2025_RECIPE,
                                                  SAHOO2026_RECIPE)}
DEFAULT_PRESET = "laptop"


def preset(name: str | None) -> Recipe:
    """The named recipe; ValueError naming an unknown one."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; known: {', '.join(PRESETS)}")
    return PRESETS[name]
