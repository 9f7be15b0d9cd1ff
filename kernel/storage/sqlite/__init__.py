from kernel.storage.sqlite.storage import *  # noqa: F403
