//! MOSE workloads (placeholder until the workloads land).
