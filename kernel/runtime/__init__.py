"""The runtime: the `Kernel`, plugins and their supervisors, adapter
discovery, embedding in other hosts, and the status socket. Public names
are exported by `kernel`."""
