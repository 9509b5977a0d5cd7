"""Delivery channels: the plugin interface (base) and the built-in webhook and SMTP."""

from pushtask_worker.channels.base import (
    Attempt,
    Channel,
    ChannelContext,
    Delivery,
    Outcome,
    UnknownChannel,
    load_channel,
)

__all__ = [
    "Attempt",
    "Channel",
    "ChannelContext",
    "Delivery",
    "Outcome",
    "UnknownChannel",
    "load_channel",
]
