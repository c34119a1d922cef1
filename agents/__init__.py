"""Agents that learn DynaLay's layer selection. They see the environment only through the
Gymnasium / stable-baselines3 interfaces."""
