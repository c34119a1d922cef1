"""Train a DynaLay agent with DQN: `python agents/train.py --algo dqn` with the same flags."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.train import main

if __name__ == "__main__":
    main(forced={"algo": "dqn"})
