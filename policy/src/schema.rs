//! The policy hook: the JSON an operator's own policy program receives on
//! stdin ([`PlanRequest`]) and must print on stdout (a
//! [`Decision`](crate::select::Decision)).
//!
//! The program is untrusted as far as MOSE is concerned: its answer is
//! checked with [`validate_decision`] before anything is run, so a buggy
//! policy cannot make MOSE exceed the user's bandwidth cap, run a technique
//! the user did not allow, or loop through thousands of rounds.

use serde::{Deserialize, Serialize};

use crate::annotations::{KpiTargets, Technique, TechniqueChoice};
use crate::model::{Calibration, Measurements};
use crate::select::Decision;

/// Most pre-copy rounds a decision may ask for.
pub const MAX_ROUNDS_LIMIT: u32 = 64;

/// Everything a policy needs to choose a plan for one migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Container id.
    pub container: String,
    /// containerd namespace.
    pub namespace: String,
    /// Destination endpoint, `host:port`.
    pub destination: String,
    /// The container's `mose.io/*` annotations, parsed.
    pub targets: KpiTargets,
    /// What MOSE measured just before planning.
    pub measurements: Measurements,
    /// This node's current calibration of the cost model.
    pub calibration: Calibration,
    /// For a Kubernetes pod planned as a whole: its containers' ids, the
    /// one moving first (`container`) first. `targets` are the pod's, and
    /// `measurements` the sums over these containers. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_containers: Vec<String>,
}

/// Parses a policy program's stdout and validates it against the request.
pub fn parse_decision(json: &str, req: &PlanRequest) -> Result<Decision, String> {
    let d: Decision = serde_json::from_str(json.trim())
        .map_err(|e| format!("the policy's answer is not a valid decision: {e}"))?;
    validate_decision(&d, req)?;
    Ok(d)
}

/// Checks a decision from an untrusted policy program before MOSE acts on it.
///
/// A decision must carry a plan unless it refuses (and none if it does); the
/// plan may use any of the four techniques (an unknown name fails to parse),
/// but the one the user forced with `mose.io/technique` if any; at most
/// [`MAX_ROUNDS_LIMIT`] rounds; no downtime-target stop rule on hybrid (its
/// downtime does not depend on the rounds, and MOSE's source would cut them
/// short for nothing); a bandwidth cap greater than zero and within
/// `mose.io/max-bandwidth` (which, when set, makes a cap mandatory); and
/// predictions finite and non-negative.
pub fn validate_decision(d: &Decision, req: &PlanRequest) -> Result<(), String> {
    if d.refused {
        if d.plan.is_some() {
            return Err("a refused decision must not carry a plan".into());
        }
        if d.feasible {
            return Err("a refused decision cannot be feasible".into());
        }
    }
    if let Some(p) = &d.predicted {
        for (name, v) in [("downtime_ms", p.downtime_ms), ("total_ms", p.total_ms)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "predicted.{name} = {v}: must be finite and non-negative"
                ));
            }
        }
    }
    for t in &d.targets {
        for (name, v) in [
            ("limit", t.limit),
            ("predicted", t.predicted),
            ("miss_by", t.miss_by),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "targets[{}].{name} = {v}: must be finite and non-negative",
                    t.annotation
                ));
            }
        }
    }
    let Some(plan) = &d.plan else {
        if d.refused {
            return Ok(());
        }
        return Err("the decision carries no plan but does not refuse".into());
    };
    if let TechniqueChoice::Fixed(t) = req.targets.technique {
        if plan.technique != t {
            return Err(format!(
                "the plan uses {} but mose.io/technique={t}",
                plan.technique
            ));
        }
    }
    if plan.max_rounds > MAX_ROUNDS_LIMIT {
        return Err(format!(
            "max_rounds = {}: at most {MAX_ROUNDS_LIMIT}",
            plan.max_rounds
        ));
    }
    if plan.technique == Technique::Hybrid && plan.stop_below_downtime_ms.is_some() {
        return Err(
            "stop_below_downtime_ms is a pre-copy stop rule: hybrid's downtime does not \
             depend on its rounds, leave it null"
                .into(),
        );
    }
    if plan.bandwidth_cap_bps == Some(0) {
        return Err("bandwidth_cap_bps = 0: a cap must be greater than zero".into());
    }
    if let Some(max) = req.targets.max_bandwidth_bps {
        match plan.bandwidth_cap_bps {
            None => {
                return Err(format!(
                    "the plan is uncapped but mose.io/max-bandwidth is {max} bit/s"
                ))
            }
            Some(cap) if cap > max => {
                return Err(format!(
                    "bandwidth_cap_bps = {cap} exceeds mose.io/max-bandwidth ({max} bit/s)"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PlanParams, Prediction};
    use crate::select::select;

    const DOC: &str = include_str!("../../docs/policy.md");

    /// The JSON block following `<!-- example: NAME -->` in docs/policy.md.
    fn doc_example(name: &str) -> String {
        let marker = format!("<!-- example: {name} -->");
        let after = DOC.split_once(&marker).expect("example marker").1;
        let body = after.split_once("```json").expect("json block").1;
        body.split_once("```").expect("closing fence").0.to_string()
    }

    fn request() -> PlanRequest {
        PlanRequest {
            container: "state".into(),
            namespace: "default".into(),
            destination: "10.0.0.2:7946".into(),
            targets: crate::annotations::parse_pairs([
                ("mose.io/max-downtime", "500ms"),
                ("mose.io/max-migration-time", "10s"),
                ("mose.io/max-bandwidth", "800Mbit"),
            ])
            .unwrap(),
            measurements: Measurements {
                memory_bytes: 64 * 1024 * 1024,
                dirty_bytes_per_s: 4.0 * 1024.0 * 1024.0,
                working_set_bytes: Some(16 * 1024 * 1024),
                link_bytes_per_s: 125_000_000.0,
                moves_address: false,
            },
            calibration: Calibration::default(),
            pod_containers: Vec::new(),
        }
    }

    #[test]
    fn doc_examples_parse_validate_and_round_trip() {
        let req: PlanRequest = serde_json::from_str(&doc_example("PlanRequest")).unwrap();
        assert_eq!(
            req,
            request(),
            "the documented request is the one built here"
        );
        let text = doc_example("Decision");
        let d = parse_decision(&text, &req).unwrap();
        // the documented decision is what MOSE's own selection answers
        let ours = select(&req.targets, &req.measurements, &req.calibration);
        assert_eq!(d, ours);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
        let refused: Decision = serde_json::from_str(&doc_example("refused Decision")).unwrap();
        assert!(validate_decision(&refused, &req).is_ok());
        assert!(refused.refused);
        let mut strict = req.targets.clone();
        strict.strict = true;
        strict.max_downtime = Some(std::time::Duration::from_millis(100));
        assert_eq!(
            refused,
            select(&strict, &req.measurements, &req.calibration)
        );
        let lazy = parse_decision(&doc_example("lazy Decision"), &req).unwrap();
        assert_eq!(
            lazy,
            select(&lazy_targets(&req), &req.measurements, &req.calibration)
        );
        assert!(lazy.feasible && lazy.predicted.is_some_and(|p| p.lazy_bytes > 0));
    }

    /// The documented request with a downtime target only a lazy plan meets.
    fn lazy_targets(req: &PlanRequest) -> KpiTargets {
        let mut t = req.targets.clone();
        t.max_downtime = Some(std::time::Duration::from_millis(250));
        t
    }

    /// Prints the documentation's examples: `cargo test -p mose-policy
    /// print_doc_examples -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_doc_examples() {
        let req = request();
        println!("{}", serde_json::to_string_pretty(&req).unwrap());
        let d = select(&req.targets, &req.measurements, &req.calibration);
        println!("{}", serde_json::to_string_pretty(&d).unwrap());
        let mut strict = req.targets.clone();
        strict.strict = true;
        strict.max_downtime = Some(std::time::Duration::from_millis(100));
        let d = select(&strict, &req.measurements, &req.calibration);
        println!("{}", serde_json::to_string_pretty(&d).unwrap());
        let d = select(&lazy_targets(&req), &req.measurements, &req.calibration);
        println!("{}", serde_json::to_string_pretty(&d).unwrap());
    }

    fn good() -> (Decision, PlanRequest) {
        let req = request();
        let d = select(&req.targets, &req.measurements, &req.calibration);
        assert!(validate_decision(&d, &req).is_ok(), "{d:?}");
        (d, req)
    }

    fn with_plan(f: impl FnOnce(&mut PlanParams)) -> Result<(), String> {
        let (mut d, req) = good();
        if let Some(p) = d.plan.as_mut() {
            f(p);
        }
        validate_decision(&d, &req)
    }

    #[test]
    fn lazy_decisions_are_valid() {
        for t in [Technique::Postcopy, Technique::Hybrid] {
            let mut req = request();
            req.targets.technique = TechniqueChoice::Fixed(t);
            let d = select(&req.targets, &req.measurements, &req.calibration);
            assert_eq!(d.plan.map(|p| p.technique), Some(t), "{d:?}");
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(parse_decision(&json, &req), Ok(d));
        }
        // and when auto falls back to one (a target no eager plan meets)
        let req = request();
        let d = select(&lazy_targets(&req), &req.measurements, &req.calibration);
        assert!(
            d.feasible && d.plan.is_some_and(|p| p.technique.is_lazy()),
            "{d:?}"
        );
        assert!(validate_decision(&d, &req).is_ok());
    }

    #[test]
    fn untrusted_decisions_are_checked() {
        let e = with_plan(|p| p.max_rounds = 65).unwrap_err();
        assert!(e.contains("max_rounds"), "{e}");
        assert!(with_plan(|p| p.max_rounds = 64).is_ok());
        let e = with_plan(|p| p.bandwidth_cap_bps = Some(0)).unwrap_err();
        assert!(e.contains("greater than zero"), "{e}");
        let e = with_plan(|p| p.bandwidth_cap_bps = Some(900_000_000)).unwrap_err();
        assert!(e.contains("exceeds mose.io/max-bandwidth"), "{e}");
        let e = with_plan(|p| p.bandwidth_cap_bps = None).unwrap_err();
        assert!(e.contains("uncapped"), "{e}");
        // every technique is runnable now, lazy ones included
        assert!(with_plan(|p| p.technique = Technique::Postcopy).is_ok());
        assert!(with_plan(|p| {
            p.technique = Technique::Hybrid;
            p.stop_below_downtime_ms = None;
        })
        .is_ok());
        // the pre-copy stop rule would cut hybrid's rounds for nothing
        let e = with_plan(|p| {
            p.technique = Technique::Hybrid;
            p.stop_below_downtime_ms = Some(500);
        })
        .unwrap_err();
        assert!(e.contains("stop_below_downtime_ms"), "{e}");

        let (mut d, req) = good();
        d.plan = None;
        assert!(validate_decision(&d, &req).unwrap_err().contains("no plan"));
        d.refused = true;
        d.feasible = false;
        assert!(validate_decision(&d, &req).is_ok());

        let (mut d, req) = good();
        d.refused = true;
        assert!(validate_decision(&d, &req)
            .unwrap_err()
            .contains("must not carry a plan"));

        let (mut d, req) = good();
        d.predicted = Some(Prediction {
            downtime_ms: -1.0,
            ..d.predicted.unwrap()
        });
        assert!(validate_decision(&d, &req)
            .unwrap_err()
            .contains("downtime_ms"));

        let (mut d, mut req) = good();
        req.targets.technique = TechniqueChoice::Fixed(Technique::Cold);
        d.plan.as_mut().unwrap().technique = Technique::Precopy;
        assert!(validate_decision(&d, &req)
            .unwrap_err()
            .contains("mose.io/technique=cold"));

        // garbage from the program
        let req = request();
        assert!(parse_decision("not json", &req).is_err());
        let e = parse_decision(
            r#"{"plan":{"technique":"warp","max_rounds":1,"bandwidth_cap_bps":null,"compression":false},
                "predicted":null,"targets":[],"feasible":true,"refused":false,"reason":"",
                "candidates_considered":1}"#,
            &req,
        )
        .unwrap_err();
        assert!(e.contains("not a valid decision"), "{e}");
        // NaN cannot be written in JSON; serde_json's null for it is refused
        let e = parse_decision(
            r#"{"plan":null,"predicted":{"downtime_ms":null,"total_ms":1,"bytes":1,"rate_bps":1,
                "rounds":1,"available":true},"targets":[],"feasible":false,"refused":true,
                "reason":"","candidates_considered":0}"#,
            &req,
        )
        .unwrap_err();
        assert!(e.contains("not a valid decision"), "{e}");
    }
}
