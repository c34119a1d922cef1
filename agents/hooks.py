"""What an algorithm's training loop calls as it goes; the run (agents/run.py) answers."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from dynalay_env import EpisodeRecord


class Hooks(Protocol):
    progress: bool
    """Whether the loop should show a progress bar."""

    def on_infos(self, infos: Sequence[Mapping[str, Any]]) -> None:
        """SB3-style per-env info dicts of one vector step (finished episodes carry the record's keys)."""

    def on_episodes(self, record: EpisodeRecord) -> None:
        """Episodes that finished in one vector step."""

    def on_losses(self, losses: Mapping[str, float], step: int) -> None:
        """The agent's own losses, for algorithms that do not log through SB3."""

    def after_step(self, step: int) -> None:
        """After every vector step: periodic logging, evaluation and checkpoints."""

    def between_updates(self, step: int) -> None:
        """Where the policy may change outside the algorithm's own update without spoiling it: before an
        on-policy rollout starts (SB3), after an update (REINFORCE). The imitation refresh runs here."""
