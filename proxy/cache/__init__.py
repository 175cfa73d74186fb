"""The cache: the read driver, its replies, coalescing, cooldowns, invalidation, and the ports
(Store, Upstream) it does all its I/O through."""
