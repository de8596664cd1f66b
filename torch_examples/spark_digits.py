"""The digits example (``digits.py``) on Spark: the training split written as a DataFrame to
Parquet, Horovod's ranks started as Spark tasks (``hvdtrain.spark.run``), each reading its own
equal shard of the Parquet files, tracked into one MLflow run.

    python torch_examples/spark_digits.py --epochs 5                          # local[2]
    python torch_examples/spark_digits.py --master spark://head:7077 --num-proc 4 \\
        --parquet /shared/digits.parquet --experiment digits-spark

The Spark flags are ``--master``, ``--num-proc`` and ``--parquet``; every other flag is
``digits.py``'s. Keras twin: ``tf_examples/spark_digits.py``.
"""

import cloudpickle
import digits as example  # the sibling script: its code travels to the executors by value

from hvdtrain.datasets.digits import spark_main

cloudpickle.register_pickle_by_value(example)

if __name__ == "__main__":  # Horovod's helper processes re-import this script
    spark_main(example.main, "PyTorch")
