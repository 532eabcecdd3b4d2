"""What a run's executor counted: its result, iterations and token usage, and how it ended.

Shared by the agent loop, the workflow executors, the execution that drives them and the
tracing facade, which reports it; it imports none of them, so none of them imports another
for a type.
"""

from __future__ import annotations

import dataclasses

from agentrun import reasons


@dataclasses.dataclass
class Outcome:
    result: str
    iterations: int
    input_tokens: int = 0
    output_tokens: int = 0
    reason: str = reasons.Reason.COMPLETED  # or AskedUser, MaxIterationsReached (BudgetExceeded is raised)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens,
        }

    def add(self, part: Outcome) -> None:
        """Add ``part``'s iterations and tokens (a workflow sums its loops)."""
        self.iterations += part.iterations
        self.input_tokens += part.input_tokens
        self.output_tokens += part.output_tokens
