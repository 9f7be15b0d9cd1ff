"""Time: the timer wheel, the clock, cron, triggers and their policies, and
the scheduler that drives the wheel. Public names are exported by `kernel`."""
