"""Everything that starts, watches and stops a job's workers: the launcher behind ``hvdtrain run``,
``hvdtrain.spark.run`` and the demo.

- ``request``: what the user asked for (``Request``), checked into a ``Job`` before anything starts;
- ``hosts``, ``slurm``: where the workers run (``-H`` lists, hostfiles, discovery scripts, Slurm
  allocations); ``preflight`` and ``host_probe``: the checks of every host of a multi-host job;
- ``environment``: the workers' environment, built once (MLflow, hang bounds, Horovod defaults);
- ``job``: the horovodrun command and the job's run; ``monitor``, ``parsers``, ``stopping``,
  ``console``, ``summary``: watching it, reading what it prints, stopping it, showing it;
- ``worker_guard``: the parent of a remote worker; ``horovodrun``: horovodrun without its probe;
- ``testhosts``: separate hosts on this machine (network namespaces) to launch on.

Importing this package imports nothing: each module is imported by what uses it, so the CLI starts
without the launcher's dependencies.
"""
