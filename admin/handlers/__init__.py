"""Request handlers: parse, call one service method, render records with ``as_json``."""
