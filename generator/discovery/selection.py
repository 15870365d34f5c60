"""The choice of h_bg among the scored candidates: the best score, or a person's override."""

from __future__ import annotations

from dataclasses import dataclass

from generator.discovery.config import ConfigError, Override
from generator.discovery.scoring import CandidateScore


@dataclass(frozen=True)
class Choice:
    """The chosen candidate index and sign, how it was chosen, and its score."""

    index: int
    sign: int
    chosen_by: str
    score: CandidateScore


def choose_direction(scores: list[CandidateScore], count: int, override: Override | None = None) -> Choice:
    """The best-scored (index, sign), or the override's when one is given (checked against K)."""
    by_key = {(score.index, score.sign): score for score in scores}
    if override is not None:
        check_override(override, count)
        return Choice(override.index, override.sign, "override", by_key[(override.index, override.sign)])
    if not scores:
        raise ValueError("no candidates were scored")
    best = max(scores, key=lambda score: (score.total, -score.index, score.sign))
    return Choice(best.index, best.sign, "automatic", best)


def check_override(override: Override | None, count: int) -> None:
    """Raise a clear error when an override names a candidate that does not exist."""
    if override is not None and override.index >= count:
        raise ConfigError(f"discover.override.index {override.index} is out of range: there are {count} "
                          f"candidate directions (0..{count - 1})")
