"""Litestar routes: thin, decode input, call a service, encode output."""
