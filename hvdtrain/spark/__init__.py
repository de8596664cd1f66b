"""Training beside the data on Spark: Horovod's Spark runner with hvdtrain's launcher duties.

    import hvdtrain.spark as hs
    df.write.parquet(path)                                     # on the driver
    results = hs.run(train, num_proc=4, args=(path,))          # train(path) on 4 Spark tasks
    # in train, on every rank: shard = hs.read_shard(path)     # this rank's equal share of the rows

``run`` needs an active SparkSession (local mode, standalone, YARN, Kubernetes); the executors'
Python (``spark.pyspark.python``) must have hvdtrain installed. Importing this package does not
import pyspark or a framework: ``read_shard`` runs in the workers with pyarrow only.
"""

from .data import read_shard
from .runner import SparkJobError, run

__all__ = ["SparkJobError", "read_shard", "run"]
