"""The chat of the pub/sub notebooks: a WebSocket chat server and the page it serves.

    python -m patterns.chat server --backend redis --http 8081
    python -m patterns.chat server --backend zmq --http 8080 --pub 5000 --sub 5001 --sub 5002
    python -m patterns.chat history            # the AMQP backend's history service

One server, five backends (`backends.py`), each a few lines over `patterns.pubsub`. The
defaults are the book's names and ports (docs/wire.md), so its Node.js samples and this
server, started side by side against the same broker, chat with each other.
"""
