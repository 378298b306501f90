"""Distribution plumbing: worker context, TF_CONFIG, GPU mapping, ports, strategies by name."""
