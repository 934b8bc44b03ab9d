"""Rerankers: pure logic over an Engine, speaking the event vocabulary of ``search.rerank.events``."""
