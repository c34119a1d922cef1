"""Train a DynaLay agent with REINFORCE: `python agents/train.py --algo reinforce` with the same flags."""

from agents.train import main

if __name__ == "__main__":
    main(forced={"algo": "reinforce"})
