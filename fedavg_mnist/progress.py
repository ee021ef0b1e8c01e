"""Round progress: a self-rewriting bar on a terminal, one plain line per round otherwise."""

import sys
from typing import TextIO


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m07s` or `12s`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Reports each evaluated round: a bar with ETA on a TTY, a log line when piped."""

    def __init__(self, total_rounds: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total_rounds = total_rounds
        self.stream = stream or sys.stdout
        self.width = width
        self.is_terminal = self.stream.isatty()
        self.best = float("-inf")
        self._round_seconds: list[float] = []

    def update(self, server_round: int, accuracy: float, loss: float, seconds: float) -> None:
        """Show round `server_round` (0 is the initial model) and its test accuracy."""
        self.best = max(self.best, accuracy)
        if server_round >= 1:
            self._round_seconds.append(seconds)
        if not self.is_terminal:
            self.stream.write(
                f"round {server_round:4d}  accuracy {accuracy:.4f}  loss {loss:.4f}  "
                f"{seconds:6.2f}s\n"
            )
            self.stream.flush()
            return
        recent = self._round_seconds[-20:]
        remaining = self.total_rounds - server_round
        eta = format_duration(remaining * sum(recent) / len(recent)) if recent else "?"
        filled = int(self.width * server_round / max(self.total_rounds, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\rround {server_round}/{self.total_rounds} [{bar}] accuracy {accuracy:.4f} "
            f"(best {self.best:.4f})  ETA {eta}  "
        )
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.is_terminal:
            self.stream.write("\n")
            self.stream.flush()
