"""`unmask prepare`: a face corpus -> aligned (T, M) pairs as Parquet, split by identity.

- config.py: `PrepareConfig`, the job's flags;
- pairs.py: the synthetic-mask pair maker and what every pair maker shares (error rows, reading);
- rmfrd.py: RMFRD's pair maker (eye alignment, real-mask rows with a same-identity reference);
- run.py: the Ray Data run over resumable shards, and its summary;
- synthetic.py: pairs without a corpus (smooth random T, M = T half covered), for the benchmarks and
  the tests of training's mechanics.
"""
