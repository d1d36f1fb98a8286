//! Deterministic simulated block device. (to be written)
