"""One IMAP connection: dial with one deadline (DNS included), TLS contexts, the fixed tag prefix,
heartbeats and quick ACKs while reading, and the FETCH commands of a catch-up (fetching.py)."""
