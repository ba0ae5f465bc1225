"""The one exception the agent's operations raise (a refusal, named apart from the controller's fleet AgentError
that reports it): it becomes a response with ok=false and an ErrorInfo."""
from __future__ import annotations

from .protocol import ErrorCode, ErrorInfo


class AgentRefusal(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def info(self) -> ErrorInfo:
        return {"code": self.code, "message": self.message}
