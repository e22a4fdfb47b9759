"""The parent's one loop: the Arbiter and the halves it is made of (reconcile what should run,
read the children's messages, collect their exits, report status), and the failing-tick guard.
May import every other part of the supervisor; nothing but the CLI imports it."""
