"""The built-in notifier adapter (`kernel.notifier.log`)."""
