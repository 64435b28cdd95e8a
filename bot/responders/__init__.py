"""Responders: where replies come from."""

from bot.responders.base import Responder, ResponderRequest, ResponderResult, SummaryRequest
from bot.responders.echo import EchoResponder

__all__ = [
    "EchoResponder",
    "Responder",
    "ResponderRequest",
    "ResponderResult",
    "SummaryRequest",
]
