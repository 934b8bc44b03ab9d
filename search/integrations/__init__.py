"""The reasoning in other stacks' own objects: LangChain, LlamaIndex and Haystack rerankers (``langchain``,
``llamaindex``, ``haystack``), MTEB and PyTerrier (``mteb``, ``pyterrier``). Each imports its framework only when
imported itself, and reranks through our HTTP API or in process (``source``)."""
