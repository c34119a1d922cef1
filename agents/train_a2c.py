"""Train a DynaLay agent with A2C: `python agents/train.py --algo a2c` with the same flags."""

from agents.train import main

if __name__ == "__main__":
    main(forced={"algo": "a2c"})
