"""Training: the epoch loop (engine), a run's session from fresh or resumed (train), k-fold runs,
multi-process runs, the run folder, TensorBoard, losses/optimizers/schedules, devices and seeds,
and `dltool config`'s dry build (check).

It may import store, models, data, config and errors; never inference, experiments or cli.
"""
