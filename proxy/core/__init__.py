"""Pure rules: the model, run ids, scopes, paths, headers, the cache policy.
No I/O, no framework."""
