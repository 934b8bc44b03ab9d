"""Rerankers: pure logic over an Engine behind one interface (``search.rerank.base``), speaking the event
vocabulary of ``search.rerank.events``; ``search.rerank.registry`` maps names to their classes. Nothing is imported
here, so that reading the events (``search.rerank.events``, which imports nothing of the project) loads no
reranker, engine or index."""
