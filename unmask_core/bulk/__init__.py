"""`unmask unmask`, the bulk job: a gallery archive -> unmasked face images + embeddings Parquet.

- config.py: `BulkConfig`, the job's flags;
- stages.py: the Ray Data stages (find faces on CPU; unmask and embed on the accelerator; write);
- run.py: listing the inputs, the resumable sharded run, and its summary.
"""
