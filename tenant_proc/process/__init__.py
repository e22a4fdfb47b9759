"""The company process as the supervisor sees it: signals, the parent's pipe, heartbeats and
waiting (control.py), the process title, and memory given back after work. Imports ipc only."""
