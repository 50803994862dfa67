"""`launcher=slurm`, in three parts by concern; this module names them and re-exports their public names.

- launch/slurm_submit.py: the sbatch parameters for a config, the batch script, the dry run, submitting
  through submitit (one job, or one job array for a sweep);
- launch/node_task.py: what every node of the job runs, under submitit (TorchrunJob) and under
  scripts/slurm/train.sbatch (`python -m stgnn_launch.launch.node_task`): torchrun with the job's
  rendezvous, the preemption signal turned into a step checkpoint, the requeue, STGNN_RESUME;
- launch/slurm_watch.py: following a submitted job to its end (states, requeues, the result).
"""

from stgnn_launch.launch.node_task import (RESUME_ENV, NodeTask, TorchrunJob, rdzv_port, run_torchrun,
                                           stop_ranks_at_step_boundary)
from stgnn_launch.launch.slurm_submit import (batch_script, check_partition_has_gpus, cpus_per_task, dry_run, job_for,
                                              slurm_parameters, submit, submit_jobs)
from stgnn_launch.launch.slurm_watch import FINAL_STATES, JobWatch, controller_view, follow, watch_until_over

__all__ = ["FINAL_STATES", "RESUME_ENV", "JobWatch", "NodeTask", "TorchrunJob", "batch_script",
           "check_partition_has_gpus", "controller_view", "cpus_per_task", "dry_run", "follow", "job_for", "rdzv_port",
           "run_torchrun", "slurm_parameters", "stop_ranks_at_step_boundary", "submit", "submit_jobs",
           "watch_until_over"]
