//! MOSE's node agent (`mose-plugin`: the migration listener, the policy hook
//! service, measurements, calibration) and `mosectl`. The migration engine
//! itself is the `mose-migrate` crate.

pub mod calibrate;
pub mod measure;
pub mod nri;
pub mod pods;
pub mod policy;
pub mod visibility;
