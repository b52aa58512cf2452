"""`unmask train`: f0 (stage `baseline`, eq. 4), f (stage `unmask`, eq. 9) and the RMFRD fine-tune
(stage `real`).

- config.py: `TrainConfig`, the job's flags;
- batches.py: pairs rows -> decoded batches (no torch);
- loop.py: the stage's models, `training_step` (plain PyTorch) and the worker loop;
- t_hat.py: stage `real`'s latent targets (T-hat by latent optimisation, cached) and its dataset;
- history.py: metrics.csv and the loss plot;
- run.py: the Ray Train run and what it leaves (metrics, the trained model set).
"""
