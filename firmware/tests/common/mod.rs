//! Helpers shared by the firmware's integration tests and examples.
#![allow(dead_code)]

pub(crate) mod judge;
pub(crate) mod resolution;
