//! Command-line front ends.

pub mod data;
