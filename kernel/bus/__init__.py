"""The built-in bus adapter (`kernel.bus.local`) and topic matching."""
