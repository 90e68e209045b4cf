//! MOSE's KPI policy, as pure logic (no I/O, no async runtime).
//!
//! A container states what a migration must achieve through `mose.io/*`
//! annotations ([`annotations`]). Before migrating, MOSE measures the
//! container (memory to move, dirty rate) and the link, predicts what each
//! technique would cost with a calibrated model of its own data path
//! ([`model`]), and picks the plan that best meets the targets
//! ([`select`]). An operator may replace the selection with a program of
//! their own; the JSON it receives and must answer is defined in [`schema`].
//!
//! Everything here is deterministic and cheap, so the shim can validate
//! annotations at container create and the plugin can plan a migration
//! without side effects. See `docs/policy.md` for the user-facing contract.

pub mod annotations;
pub mod model;
pub mod oci_runtime;
pub mod schema;
pub mod select;
pub mod units;

pub use annotations::{parse, AnnotationError, KpiTargets, Objective, Technique, TechniqueChoice};
pub use model::{predict, Calibration, Measurements, ModelError, PlanParams, Prediction};
pub use schema::{validate_decision, PlanRequest};
pub use select::{select, Decision, TargetCheck};
