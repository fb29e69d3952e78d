"""Hyperparameter searches (the `hparams` sweep): Optuna through Ray Tune's OptunaSearch, one study
per base config, stored in an sqlite Optuna database beside the checkpoints, so running the same
command again loads the study and continues it. Each proposed point is an ordinary RunConfig (its own
run id, MLflow run and checkpoints), trained by the same trial function as a grid sweep.
"""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator import runner
from trainer.config import RunConfig


def _distributions(space) -> dict:
    import optuna
    dists = {}
    for name, spec in space.params.items():
        if spec[0] == "choice":
            dists[name] = optuna.distributions.CategoricalDistribution(list(spec[1]))
        else:
            dists[name] = optuna.distributions.FloatDistribution(spec[1], spec[2], log=spec[0] == "loguniform")
    return dists


def point_config(config: dict) -> RunConfig:
    """The base config with the searcher's point applied (a trial's config -> its RunConfig)."""
    base = RunConfig.from_dict(config["run"])
    point = {k: v for k, v in config.items() if k != "run"}
    return base.with_overrides([f"{k}={json.dumps(getattr(v, 'item', lambda: v)())}"
                                for k, v in sorted(point.items())])


def run_trial_point(config: dict) -> None:
    """Trainable: one proposed point, trained like a grid trial."""
    runner.run_trial({"run": point_config(config).to_dict()})


def _stored_trials(db, study: str) -> int:
    import optuna
    try:
        return len(optuna.load_study(study_name=study, storage=db).trials)
    except KeyError:
        return 0


def _report_best(db, study: str, space) -> None:
    import optuna
    done = [t for t in optuna.load_study(study_name=study, storage=db).trials if t.value is not None]
    if done:
        pick = min if space.mode == "min" else max
        best = pick(done, key=lambda t: t.value)
        print(f"study {study}: best {space.metric} {best.value:.4f} at {best.params} over "
              f"{len(done)} completed trials (stored across invocations)", flush=True)


def run_searches(bases: list[RunConfig], space, *, sweep: str, storage: Path, max_retries: int,
                 slots: int, verbose: bool) -> runner.Outcome:
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    storage.mkdir(parents=True, exist_ok=True)
    db = optuna.storages.RDBStorage(f"sqlite:///{(storage / 'optuna.db').resolve()}")
    out = runner.Outcome(slots=slots)
    total = len(bases) * space.num_samples
    for base in bases:
        study = f"{sweep}-{base.run_id()}"
        stored = _stored_trials(db, study)
        # seed offset by the trials already stored: a continued study must not replay the random
        # start-up proposals of the previous invocation (they are finished runs and would be skipped)
        searcher = OptunaSearch(space=_distributions(space), metric=space.metric, mode=space.mode,
                                study_name=study, storage=db, seed=base.train.seed + stored,
                                points_to_evaluate=None if stored else [space.start(base)])
        trainable = tune.with_resources(run_trial_point, runner.trial_resources(base))
        tuner = tune.Tuner(
            trainable, param_space={"run": base.to_dict()},
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=slots),
                                        num_samples=space.num_samples, reuse_actors=False),
            run_config=tune.RunConfig(
                name=study, storage_path=str(storage.resolve()), verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_retries),
                callbacks=[runner.progress_callback(total, out.ends(), out, resolve=point_config)]))
        try:
            tuner.fit()
        except KeyboardInterrupt as exc:
            out.interrupted = runner.signal_name(exc)
            break
        finally:
            out.not_run = total - out.ends()          # this study's and the later ones' points
        _report_best(db, study, space)
    return out
