"""Runs a trainer module under accelerate's FSDP on CPU processes, for the tests.

accelerate only shards on accelerators: on CPU it turns every multi-process run into plain
data parallelism (MULTI_CPU), whatever the config file says. This script, launched by
``accelerate launch --config_file cprec_core/training/accelerate/fsdp.yaml``, switches the
state of each new Accelerator to FSDP with the plugin that file configures (gloo, the
process's CPU as the device) and then runs the module as ``python -m`` would:

    accelerate launch --config_file .../fsdp.yaml --num_processes 2 \\
        tests/core/training/fsdp_on_cpu.py cprec_core.training.cpt --config ...
"""

import os
import runpy
import sys

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = Accelerator.__init__


def _fsdp_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    state = self.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        os.environ["FSDP_SYNC_MODULE_STATES"] = "false"  # unsupported on CPU; same weights anyway
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        for shared in (state.__dict__, PartialState._shared_state):
            shared["distributed_type"] = DistributedType.FSDP
            shared["device"] = torch.device("cpu")  # FSDP wants the plain device name


if __name__ == "__main__":
    Accelerator.__init__ = _fsdp_init
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
