//! MOSE plugin.
