"""`unmask unmask`, the bulk job: a gallery archive -> unmasked face images + embeddings Parquet.

- config.py: `BulkConfig`, the job's flags;
- rows.py: the row protocol (what a row says between the stages and once committed; a shard's rows);
- stages.py: the Ray Data stages (find faces on CPU; unmask and embed on the accelerator; write), each
  with the resources one of its actors needs, and the driver's shard commits;
- device_faces.py: faces of whole photos found on the unmask actor's device (decode with its CPU
  fallback, MTCNN, the warp);
- run.py: listing the inputs, the resumable sharded run, and its summary.
"""
