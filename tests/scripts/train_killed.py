"""Train as tools/train.py does, but SIGKILL this process at a checkpoint save.

    python train_killed.py after-save STEP CONFIG [OVERRIDES...]   # right after checkpoint-STEP is complete
    python train_killed.py during-save STEP CONFIG [OVERRIDES...]  # while checkpoint-STEP is half written
"""
import os
import signal
import sys

from paddle_medvl.config import load_config
from paddle_medvl.engine import train
from paddle_medvl.engine import trainer as engine_trainer


def main() -> None:
    mode, step, config, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    save = engine_trainer.MedVLTrainer._save_checkpoint
    real_save_state = engine_trainer.states.save_state

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def dying_save_state(folder, name, state):  # the weights are written, the optimizer state is not
        if name.startswith(engine_trainer.STATE_NAMES["optimizer"]):
            die()
        return real_save_state(folder, name, state)

    def patched(self, model, metrics=None):
        if mode == "during-save" and self.state.global_step == step:
            engine_trainer.states.save_state = dying_save_state
        save(self, model, metrics)
        if mode == "after-save" and self.state.global_step == step:
            die()

    engine_trainer.MedVLTrainer._save_checkpoint = patched
    train(load_config(config, overrides))


if __name__ == "__main__":
    main()
