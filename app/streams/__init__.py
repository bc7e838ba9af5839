"""Kafka side: producing events, and the Faust agents that fold and archive them."""
