"""Adapters to other frameworks, each in an optional extra (`pip install r3mem[langchain]`)."""
