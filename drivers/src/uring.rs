//! io_uring block device. (to be written)
