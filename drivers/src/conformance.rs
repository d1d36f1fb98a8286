//! The conformance suite every [`crate::BlockDevice`] backend must pass. (to be written)
