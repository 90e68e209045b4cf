//! The pod's plan: a pull whose technique is `auto` asks this node's policy
//! hook to plan for the pod as a whole (its containers are frozen
//! together). The hook lives in the node agent; the engine sees it as a
//! [`PodPlannerFn`].

use std::{future::Future, pin::Pin, sync::Arc};

/// What the planner is asked: the pod's running containers (the one moving
/// first, first) and the destination endpoint `host:port`.
#[derive(Debug, Clone)]
pub struct PodPlanQuery {
    pub containers: Vec<String>,
    pub destination: String,
}

/// What the policy decided for the pod (see `mose-plugin`'s policy hook).
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// `builtin`, or the operator's policy program.
    pub policy: String,
    pub policy_error: Option<String>,
    pub request: mose_policy::PlanRequest,
    pub decision: mose_policy::Decision,
}

/// Plans a pod's migration; an error is the reason it cannot be planned.
pub type PodPlannerFn = Arc<
    dyn Fn(PodPlanQuery) -> Pin<Box<dyn Future<Output = Result<PodPlan, String>> + Send>>
        + Send
        + Sync,
>;
