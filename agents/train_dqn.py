"""Train a DynaLay agent with DQN: `python agents/train.py --algo dqn` with the same flags."""

from agents.train import main

if __name__ == "__main__":
    main(forced={"algo": "dqn"})
