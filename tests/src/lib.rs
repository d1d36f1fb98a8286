//! Bolide end-to-end test helpers.
