"""All SQL of the bot, by concern, over one Database (engine and retry policy).

The message flow uses `conversations`; the worker's feature flags `flags` and its
blocklist `blocklist`; `bot ops` the rest. Nothing outside bot/store writes SQL.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.blocklist import BlocklistQueries
from bot.store.channel_configs import ChannelConfigQueries
from bot.store.chat_configs import ChatConfigQueries
from bot.store.conversations import ConversationQueries
from bot.store.database import Database
from bot.store.experiments import ExperimentQueries
from bot.store.feedback import FeedbackQueries
from bot.store.flags import FlagQueries
from bot.store.housekeeping import HousekeepingQueries
from bot.store.inbox import InboxQueries
from bot.store.monitoring import Monitoring
from bot.store.ops_queries import OpsQueries
from bot.store.partitions import PartitionQueries
from bot.store.retry import DatabaseRetry
from bot.store.summaries import SummaryQueries
from bot.store.usage import UsageQueries


class Store:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.conversations = ConversationQueries(database)
        self.flags = FlagQueries(database)
        self.blocklist = BlocklistQueries(database)
        self.channel_configs = ChannelConfigQueries(database)
        self.chat_configs = ChatConfigQueries(database)
        self.housekeeping = HousekeepingQueries(database)
        self.records = OpsQueries(database)
        self.monitoring = Monitoring(database)
        self.partitions = PartitionQueries(database)
        self.inbox = InboxQueries(database)
        self.usage = UsageQueries(database)
        self.experiments = ExperimentQueries(database)
        self.feedback = FeedbackQueries(database)
        self.summaries = SummaryQueries(database)

    @classmethod
    def on(cls, engine: AsyncEngine, retry: DatabaseRetry) -> Store:
        return cls(Database(engine, retry))

    @property
    def engine(self) -> AsyncEngine:
        return self.database.engine
