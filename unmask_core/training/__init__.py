"""`unmask train`: f0 (stage `baseline`, eq. 4), f (stage `unmask`, eq. 9) and the RMFRD fine-tune
(stage `real`).

- stages.py: the stage table (what each stage trains, starts from, reads and compares);
- config.py: `TrainConfig`, the job's flags;
- checks.py: what the driver checks before Ray starts (model files, pairs, LPIPS weights, output);
- batches.py: pairs rows -> decoded batches (no torch), and the pairs dataset;
- loop.py: the stage's models, `training_step` (plain PyTorch) and the worker loop;
- resume.py: which checkpoint a rerun resumes from;
- targets.py: `--cache-targets`, f0(T) and ArcFace(T) computed once per pair;
- t_hat.py: stage `real`'s latent targets (T-hat by latent optimisation, cached) and its dataset;
- history.py: metrics.csv and the loss plot;
- run.py: the Ray Train run and what it leaves (metrics, the trained model set).
"""
