"""What the supervisor shows the outside: the control socket, status.json, Prometheus metrics,
sd_notify, the pid file and logging. Imports children/ (the records it reports) and below."""
