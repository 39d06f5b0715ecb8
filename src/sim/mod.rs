//! The simulated smolvm (being written).
