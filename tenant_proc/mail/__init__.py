"""The mail of one folder: checkpoint -> fetch -> handler -> advance (mailbox.py), replays of
failed emails, UIDVALIDITY changes, and the processed row held for the next commit."""
