"""Train a DynaLay agent with PPO: `python agents/train.py --algo ppo` with the same flags."""

from agents.train import main

if __name__ == "__main__":
    main(forced={"algo": "ppo"})
