"""Tunes and trains optimizers on one config over label-noise levels and seeds; the final and early-stopped model.

    python -m benchmarks.compare [--config configs/digits.py]
        [--optimizers sgd,msam,sam,sam_late,...] [--seeds 0,1,2,3,4] [--label_noise 0,0.2,0.4]
        [--validation_fraction 0.1] [--no_sweep | --sweep_seed 100 --lr_factors 0.3,1,3
        --msam_rho_grid 0.3,1,3,10 --msam_rho_grid_adamw_lion 0.03,0.1,0.3,1 --sam_rho_grid 0.03,0.1,0.3,1]
        [--epochs N] [--steps N] [--eval_every_epochs 1] [--out benchmarks/results/compare_digits_tuned]
        [--rho msam=1,...] [--lr adamw=3e-3,...] [--weight_decay adamw=0.05,...]
        [--no_sharpness] [--merge] [--dry_run] [--report_only] [--dpi 80]

The protocol (issue 28: a fair comparison, as a practitioner would tune). Each run
calls `msam_jax.training.train_and_evaluate` in this process, in a fresh temporary
workdir, on one device, evaluating every epoch; the loop keeps the model of the
evaluation with the best validation accuracy (`config.best_model_metric`; ties: lower
validation loss) beside the final one and reports it under `best_*`.

Label noise (`config.label_noise`, msam_jax/data/label_noise.py) corrupts the same
training examples in every run of a level (`--label_noise_seed`, not the training
seed). `--validation_fraction` holds out a fixed, stratified part of the training
split with clean labels; each reported run also measures the training split against
its noisy labels (memorisation).

Tuning, on the validation split only, at seed `--sweep_seed` (never reported),
separately at each noise level (a practitioner tunes on their own data), in stages
(`tune`): (a) each base (sgd, adamw, lion) and sgd+mesa sweeps its learning rate over
`--lr_factors` times its centre (SGD's: the config's; AdamW's and Lion's:
BASE_LEARNING_RATE, Lion's a tenth of AdamW's); (b) each sharpness-aware optimizer
sweeps rho over its family's grid at its base's early-stopped choice of learning
rate; (c) then the other learning rates at the rho each criterion chose in (b) (once
when both chose the same). Two criteria choose from the same sweep runs (`choose`):
"final" maximises the final validation accuracy (ties: lower final validation loss),
as for a practitioner who trains to the end; "early_stopped" the best validation
accuracy over training (ties: lower validation loss there), as for one who
early-stops. A variant whose base is not in `--optimizers` still sweeps the base
first (its runs are not reported), so the work splits into processes by optimizer.

Reported: every seed of `--seeds` at each distinct chosen point (one set of runs
when both choices agree). The "final" column is the final model of the final
choice's runs, the "early-stopped" column the best-on-validation model of the
early-stopped choice's runs; each optimizer's test accuracy is paired with its
base's in the same column (same seed and corrupted labels, the base tuned the same
way): the table gives the mean paired difference with a 95 % t-interval over seeds.

`sam_late` is SAM with rho 0 until LATE_SAM_FRACTION (0.8) of training, then rho
(late-phase SAM, Zhou et al., arXiv 2410.10373; config.rho_schedule "start_jump"); its
base is sgd. MESA is compared as `sgd+mesa`: SGD with the MESA loss term on
(`config.mesa_weight`, MESA_FIELDS: the SAF code's lambda 0.3, temperature 5 and
start epoch 6, with the EMA decay scaled to a time constant of one epoch), base sgd;
its EMA model's accuracy is a row of its own ("sgd+mesa EMA", from the same runs).

Time per step is the median over epochs of (epoch wall time / steps), leaving out
the first epoch (compilation) and the last (final probes, checkpoint); it includes
the per-epoch evaluation, which costs every optimizer the same. The time ratio to
the base is taken within a seed and column. The sharpness probes (top Hessian
eigenvalue, SAM sharpness) run at the end of the reported runs only, unless
`--no_sharpness`.

`--dry_run` lists every run the command would make and estimates its wall time
(RUN_SECONDS, measured). Results are saved after every run; a stopped comparison
continues with the same command plus `--merge`, which reuses every finished run
(by `run_key`) and never overwrites one (without `--merge` an existing results.json
is refused). Parallel processes (e.g. `--optimizers` subsets) write separate
`--out` folders that `python -m benchmarks.compare.combine` joins.

Writes into `--out`: `table.md` (one table per noise level, both columns, the notes),
`results.json` (every run and sweep run with its scores, the grids, both choices per
noise level, the commands, the environment), `accuracy_vs_noise.png` (final and
early-stopped test accuracy and memorisation against the noise level, seed spread),
per noise level `accuracy_vs_epoch.png` and `accuracy_vs_time.png` (the final
choice's runs), and `sharpness.png` only when the probes ran (with a `_noise<p>`
suffix when there are several levels), one colour per optimizer throughout.
`--report_only` redraws everything from results.json.

Modules, in the order a run uses them: `flags` (the command line), `entries` (what is
compared, each with its base), `configs` (one run's config), `sweep` (the staged sweep and
its two criteria), `plan` (`--dry_run`), `runs` (training one run, its record), `merge`
(`--merge`), `summary` (over seeds, paired with the base), `table` (table.md), `plots`,
`report` (writes them all), `main` (the whole comparison), `combine` (joins parallel parts).
"""
