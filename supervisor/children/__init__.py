"""The tenant processes as the parent sees them: forking one, the child's first function, the
per-tenant state machine and restart policy (pure), hung checks, /proc liveness, a dead child's
command group, and the libraries preloaded before forking. Imports config/ and errors only."""
