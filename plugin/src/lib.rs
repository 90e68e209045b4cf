//! MOSE's node plugin: the migration endpoint that receives containers
//! (`mose-plugin`), and the source side that sends them (`mosectl migrate`).

pub mod containerd;
pub mod endpoint;
pub mod memory;
pub mod result;
pub mod rootfs;
pub mod source;
pub mod tls;
