//! The user-facing contract: `mose.io/*` annotations, parsed and validated in
//! one place.
//!
//! The shim calls [`parse`] when a container is created, so a typo or a
//! malformed value is refused at once (with a message naming the annotation,
//! quoting the value and stating the accepted form) instead of surfacing as a
//! surprising plan at migration time. The plugin calls the same function when
//! it plans a migration, so both always agree on what the annotations mean.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix reserved for MOSE's annotations; unknown keys under it are errors.
pub const PREFIX: &str = "mose.io/";
/// Longest acceptable downtime (the application frozen), a duration.
pub const MAX_DOWNTIME: &str = "mose.io/max-downtime";
/// Longest acceptable migration, from start to the container running on the
/// destination, a duration.
pub const MAX_MIGRATION_TIME: &str = "mose.io/max-migration-time";
/// What to minimise once the other targets are met.
pub const OBJECTIVE: &str = "mose.io/objective";
/// A cap on the migration's wire rate that MOSE must respect.
pub const MAX_BANDWIDTH: &str = "mose.io/max-bandwidth";
/// `auto` lets MOSE choose; otherwise only the named technique is used.
pub const TECHNIQUE: &str = "mose.io/technique";
/// `true` refuses a migration whose targets cannot be met instead of running
/// the closest plan.
pub const STRICT: &str = "mose.io/strict";

/// Every annotation MOSE accepts, in the order the documentation lists them.
pub const ACCEPTED: [&str; 9] = [
    MAX_DOWNTIME,
    MAX_MIGRATION_TIME,
    OBJECTIVE,
    MAX_BANDWIDTH,
    TECHNIQUE,
    STRICT,
    mose_contract::network::NETWORK_ANNOTATION,
    mose_contract::network::ADDRESS_ANNOTATION,
    mose_contract::pod::MIGRATE_FROM_ANNOTATION,
];

const DURATION_FORM: &str =
    "expected a duration such as 200ms or 1.5s (a positive number followed by ns, us, ms, s, m or h)";
const RATE_FORM: &str = "expected a rate such as 300Mbit, 1Gbit or 40MB/s (a positive number \
     followed by bit, kbit, Mbit, Gbit, Tbit, bps, kbps, Mbps, Gbps or by B/s, kB/s, MB/s, GB/s for bytes)";
const OBJECTIVE_FORM: &str = "expected min-downtime or min-bandwidth";
const TECHNIQUE_FORM: &str = "expected auto, cold, precopy, postcopy or hybrid";
const BOOL_FORM: &str = "expected true or false";

/// Why the annotations of a container were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A known annotation carries a value that is not of its accepted form.
    #[error("annotation {key}={value:?}: {expected}{}", detail_suffix(.detail))]
    Invalid {
        key: String,
        value: String,
        /// The accepted form, e.g. "expected a duration such as 200ms or 1.5s".
        expected: &'static str,
        /// What precisely is wrong with the value ("" when the form says it all).
        detail: String,
    },
    /// A `mose.io/` key MOSE does not know, most likely a typo.
    #[error(
        "annotation {key} is not a MOSE annotation{}; accepted: {}",
        suggestion_suffix(.suggestion),
        ACCEPTED.join(", ")
    )]
    Unknown {
        key: String,
        /// The accepted key closest to `key`, when it is close enough to be a typo.
        suggestion: Option<&'static str>,
    },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!("; {d}")
    }
}

fn suggestion_suffix(s: &Option<&'static str>) -> String {
    s.map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

pub use mose_contract::Technique;

/// `mose.io/technique`: let MOSE choose, or force one technique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TechniqueChoice {
    /// MOSE picks the technique that best meets the targets.
    #[default]
    Auto,
    /// Only this technique is considered.
    Fixed(Technique),
}

impl fmt::Display for TechniqueChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TechniqueChoice::Auto => f.write_str("auto"),
            TechniqueChoice::Fixed(t) => t.fmt(f),
        }
    }
}

impl FromStr for TechniqueChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(TechniqueChoice::Auto);
        }
        s.parse()
            .map(TechniqueChoice::Fixed)
            .map_err(|_| format!("unknown technique {s:?}: {TECHNIQUE_FORM}"))
    }
}

impl TryFrom<String> for TechniqueChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TechniqueChoice> for String {
    fn from(t: TechniqueChoice) -> String {
        t.to_string()
    }
}

/// `mose.io/objective`: what to minimise among the plans that meet the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// The shortest freeze of the application (the usual need at the edge).
    #[default]
    MinDowntime,
    /// The lowest wire rate, sparing a shared uplink, within the targets.
    MinBandwidth,
}

impl Objective {
    /// The name used in annotations and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::MinDowntime => "min-downtime",
            Objective::MinBandwidth => "min-bandwidth",
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a container's annotations ask of its migrations.
///
/// JSON form (used by the policy hook, see `docs/policy.md`): durations are
/// milliseconds as numbers, absent limits are `null`:
///
/// ```json
/// {"max_downtime_ms": 200.0, "max_migration_time_ms": null,
///  "objective": "min-downtime", "max_bandwidth_bps": 300000000,
///  "technique": "auto", "strict": false}
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "KpiTargetsJson", into = "KpiTargetsJson")]
pub struct KpiTargets {
    /// `mose.io/max-downtime`.
    pub max_downtime: Option<Duration>,
    /// `mose.io/max-migration-time`.
    pub max_migration_time: Option<Duration>,
    /// `mose.io/objective` (default min-downtime).
    pub objective: Objective,
    /// `mose.io/max-bandwidth`, in bits per second.
    pub max_bandwidth_bps: Option<u64>,
    /// `mose.io/technique` (default auto).
    pub technique: TechniqueChoice,
    /// `mose.io/strict` (default false).
    pub strict: bool,
}

/// The JSON form of [`KpiTargets`]: durations as milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct KpiTargetsJson {
    max_downtime_ms: Option<f64>,
    max_migration_time_ms: Option<f64>,
    objective: Objective,
    max_bandwidth_bps: Option<u64>,
    technique: TechniqueChoice,
    strict: bool,
}

fn ms_to_duration(field: &str, ms: Option<f64>) -> Result<Option<Duration>, String> {
    match ms {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 => Duration::try_from_secs_f64(v / 1e3)
            .map(Some)
            .map_err(|e| format!("{field}: {e}")),
        Some(v) => Err(format!(
            "{field}: must be a positive number of milliseconds, got {v}"
        )),
    }
}

impl TryFrom<KpiTargetsJson> for KpiTargets {
    type Error = String;
    fn try_from(j: KpiTargetsJson) -> Result<Self, String> {
        if j.max_bandwidth_bps == Some(0) {
            return Err("max_bandwidth_bps: must be greater than zero".into());
        }
        Ok(KpiTargets {
            max_downtime: ms_to_duration("max_downtime_ms", j.max_downtime_ms)?,
            max_migration_time: ms_to_duration("max_migration_time_ms", j.max_migration_time_ms)?,
            objective: j.objective,
            max_bandwidth_bps: j.max_bandwidth_bps,
            technique: j.technique,
            strict: j.strict,
        })
    }
}

impl From<KpiTargets> for KpiTargetsJson {
    fn from(k: KpiTargets) -> Self {
        KpiTargetsJson {
            max_downtime_ms: k.max_downtime.map(|d| d.as_secs_f64() * 1e3),
            max_migration_time_ms: k.max_migration_time.map(|d| d.as_secs_f64() * 1e3),
            objective: k.objective,
            max_bandwidth_bps: k.max_bandwidth_bps,
            technique: k.technique,
            strict: k.strict,
        }
    }
}

/// Parses and validates a container's annotations (keys outside `mose.io/`
/// are ignored: they belong to others).
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<KpiTargets, AnnotationError> {
    parse_pairs(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// [`parse`] over any sequence of key/value pairs (e.g. straight from an OCI
/// spec). A key given twice keeps its last value, as a map would.
pub fn parse_pairs<'a, I>(pairs: I) -> Result<KpiTargets, AnnotationError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut t = KpiTargets::default();
    for (key, value) in pairs {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let invalid = |expected: &'static str, detail: String| AnnotationError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            expected,
            detail,
        };
        let v = value.trim();
        match key {
            MAX_DOWNTIME => {
                t.max_downtime = Some(parse_duration(v).map_err(|d| invalid(DURATION_FORM, d))?)
            }
            MAX_MIGRATION_TIME => {
                t.max_migration_time =
                    Some(parse_duration(v).map_err(|d| invalid(DURATION_FORM, d))?)
            }
            MAX_BANDWIDTH => {
                t.max_bandwidth_bps = Some(parse_rate(v).map_err(|d| invalid(RATE_FORM, d))?)
            }
            OBJECTIVE => {
                t.objective = match v {
                    "min-downtime" => Objective::MinDowntime,
                    "min-bandwidth" => Objective::MinBandwidth,
                    _ => return Err(invalid(OBJECTIVE_FORM, String::new())),
                }
            }
            TECHNIQUE => {
                t.technique = v
                    .parse()
                    .map_err(|_| invalid(TECHNIQUE_FORM, String::new()))?
            }
            STRICT => {
                t.strict = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(BOOL_FORM, String::new())),
                }
            }
            // the service address (not a KPI target; see mose_contract::network)
            mose_contract::network::NETWORK_ANNOTATION
            | mose_contract::network::ADDRESS_ANNOTATION => {
                mose_contract::network::validate(key, v)
                    .map_err(|d| invalid(mose_contract::network::form(key), d))?
            }
            // the pod a pod created by the CRI continues (see mose_contract::pod)
            mose_contract::pod::MIGRATE_FROM_ANNOTATION => {
                mose_contract::PodOrigin::parse(v)
                    .map_err(|d| invalid(mose_contract::pod::MIGRATE_FROM_FORM, d))?;
            }
            _ => {
                return Err(AnnotationError::Unknown {
                    key: key.to_string(),
                    suggestion: closest_key(key),
                })
            }
        }
    }
    Ok(t)
}

/// The accepted key within a small edit distance of `key` (a likely typo).
fn closest_key(key: &str) -> Option<&'static str> {
    ACCEPTED
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A non-negative decimal number `123`, `1.5`, `.5` or `2.`, split off the
/// front of `s`, with what follows (the unit).
struct Decimal<'a> {
    int: u128,
    frac: u128,
    frac_digits: u32,
    unit: &'a str,
}

impl Decimal<'_> {
    /// `self × mult`, truncated to an integer; `None` on overflow.
    fn scale(&self, mult: u128) -> Option<u128> {
        let whole = self.int.checked_mul(mult)?;
        let part = self.frac.checked_mul(mult)? / 10u128.checked_pow(self.frac_digits)?;
        whole.checked_add(part)
    }

    fn is_zero(&self) -> bool {
        self.int == 0 && self.frac == 0
    }
}

fn split_decimal(s: &str) -> Result<Decimal<'_>, String> {
    if s.is_empty() {
        return Err("the value is empty".into());
    }
    if s.starts_with('-') {
        return Err("negative values are not allowed".into());
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let (int_s, frac_s) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac_s.contains('.') {
        return Err(format!("{num:?} is not a number"));
    }
    if int_s.is_empty() && frac_s.is_empty() {
        return Err("no number".into());
    }
    let too_large = || "the value is too large".to_string();
    let digits = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| too_large())
        }
    };
    // digits beyond the 30th decimal cannot change a result truncated to
    // nanoseconds or bits
    let frac_s = &frac_s[..frac_s.len().min(30)];
    Ok(Decimal {
        int: digits(int_s)?,
        frac: digits(frac_s)?,
        frac_digits: u32::try_from(frac_s.len()).map_err(|_| too_large())?,
        unit,
    })
}

/// Parses a duration: a positive decimal number and a unit (`ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h`), e.g. `200ms`, `1.5s`, `500us`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = split_decimal(s)?;
    let nanos_per_unit: u128 = match d.unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("the unit is missing".into()),
        u => return Err(format!("unknown unit {u:?}")),
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    let nanos = d
        .scale(nanos_per_unit)
        .ok_or_else(|| "the value is too large".to_string())?;
    if nanos == 0 {
        return Err("shorter than a nanosecond".into());
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "the value is too large")?;
    // the remainder is below 1e9 and so fits
    let sub = u32::try_from(nanos % 1_000_000_000).map_err(|_| "the value is too large")?;
    Ok(Duration::new(secs, sub))
}

/// Parses a rate into bits per second: a positive decimal number and a
/// decimal SI unit, in bits (`bit`, `kbit`, `Mbit`, `Gbit`, `Tbit`, or `bps`,
/// `kbps`, `Mbps`, `Gbps`, `Tbps`, or `bit/s` forms) or bytes (`B/s`, `kB/s`,
/// `MB/s`, `GB/s`, `TB/s`, or `Bps` forms). The case of `b`/`B` matters: it is
/// what tells bits from bytes.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let d = split_decimal(s)?;
    if d.unit.is_empty() {
        return Err("the unit is missing".into());
    }
    let unknown = || format!("unknown unit {:?}", d.unit);
    let (prefix, base) = match d.unit.char_indices().next() {
        Some((_, c @ ('k' | 'K' | 'M' | 'G' | 'T'))) => (Some(c), &d.unit[1..]),
        _ => (None, d.unit),
    };
    let mult: u128 = match prefix {
        None => 1,
        Some('k' | 'K') => 1_000,
        Some('M') => 1_000_000,
        Some('G') => 1_000_000_000,
        Some(_) => 1_000_000_000_000,
    };
    let bits_per_unit: u128 = match base {
        "bit" | "bits" | "bit/s" | "bits/s" | "bps" | "b/s" => 1,
        "B/s" | "Bps" | "byte/s" | "bytes/s" => 8,
        _ => return Err(unknown()),
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    let bits = d
        .scale(mult * bits_per_unit)
        .ok_or_else(|| "the value is too large".to_string())?;
    if bits == 0 {
        return Err("less than one bit per second".into());
    }
    u64::try_from(bits).map_err(|_| "the value is too large".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, value: &str) -> Result<KpiTargets, AnnotationError> {
        parse_pairs([(key, value)])
    }

    #[test]
    fn durations_of_every_accepted_form() {
        let ok = [
            ("200ms", Duration::from_millis(200)),
            ("1.5s", Duration::from_millis(1500)),
            ("2s", Duration::from_secs(2)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("0.1s", Duration::from_millis(100)),
            (".5s", Duration::from_millis(500)),
            ("2.s", Duration::from_secs(2)),
            ("250ns", Duration::from_nanos(250)),
            (" 200ms ", Duration::from_millis(200)),
            ("0.333333333333s", Duration::from_nanos(333_333_333)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s.trim()), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        let bad = [
            ("", "empty"),
            ("-200ms", "negative"),
            ("0ms", "greater than zero"),
            ("0", "unit is missing"),
            ("200", "unit is missing"),
            ("200 ms", "unknown unit"),
            ("200msec", "unknown unit"),
            ("2d", "unknown unit"),
            ("abc", "no number"),
            ("1.2.3s", "not a number"),
            ("ms", "no number"),
            ("+1s", "no number"),
            ("1e3ms", "unknown unit"),
            ("99999999999999999999999999999999999999999h", "too large"),
            ("999999999999999999999h", "too large"),
            ("0.0001ns", "shorter than a nanosecond"),
            ("NaN", "no number"),
        ];
        for (s, why) in bad {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn rates_of_every_accepted_form() {
        let ok = [
            ("300Mbit", 300_000_000),
            ("1Gbit", 1_000_000_000),
            ("500kbit", 500_000),
            ("500Kbit", 500_000),
            ("40MB/s", 320_000_000),
            ("40MBps", 320_000_000),
            ("2.5Gbit", 2_500_000_000),
            ("100Mbps", 100_000_000),
            ("100Mbit/s", 100_000_000),
            ("1Tbit", 1_000_000_000_000),
            ("8bit", 8),
            ("1B/s", 8),
        ];
        for (s, want) in ok {
            assert_eq!(parse_rate(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_rates_are_rejected_with_a_reason() {
        let bad = [
            ("", "empty"),
            ("0Mbit", "greater than zero"),
            ("300", "unit is missing"),
            ("300Mibit", "unknown unit"),
            ("300mbit", "unknown unit"),
            ("300MB", "unknown unit"),
            ("fast", "no number"),
            ("-1Gbit", "negative"),
            ("0.0001bit", "less than one bit"),
            ("99999999999Tbit", "too large"),
        ];
        for (s, why) in bad {
            let e = parse_rate(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let t = parse(&BTreeMap::new()).unwrap();
        assert_eq!(t, KpiTargets::default());
        assert_eq!(t.objective, Objective::MinDowntime);
        assert_eq!(t.technique, TechniqueChoice::Auto);
        assert!(!t.strict);
    }

    #[test]
    fn a_full_set_parses() {
        let m: BTreeMap<String, String> = [
            (MAX_DOWNTIME, "200ms"),
            (MAX_MIGRATION_TIME, "5s"),
            (OBJECTIVE, "min-bandwidth"),
            (MAX_BANDWIDTH, "300Mbit"),
            (TECHNIQUE, "precopy"),
            (STRICT, "true"),
            ("io.kubernetes.cri.container-type", "container"),
            ("org.criu.config", "/x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t = parse(&m).unwrap();
        assert_eq!(
            t,
            KpiTargets {
                max_downtime: Some(Duration::from_millis(200)),
                max_migration_time: Some(Duration::from_secs(5)),
                objective: Objective::MinBandwidth,
                max_bandwidth_bps: Some(300_000_000),
                technique: TechniqueChoice::Fixed(Technique::Precopy),
                strict: true,
            }
        );
    }

    #[test]
    fn error_names_the_annotation_quotes_the_value_and_states_the_form() {
        let e = one(MAX_DOWNTIME, "abc").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "annotation mose.io/max-downtime=\"abc\": expected a duration such as 200ms or 1.5s"
            ),
            "{e}"
        );
        let e = one(MAX_BANDWIDTH, "0Mbit").unwrap_err().to_string();
        assert!(e.contains("mose.io/max-bandwidth=\"0Mbit\""), "{e}");
        assert!(
            e.contains("300Mbit") && e.contains("greater than zero"),
            "{e}"
        );
        let e = one(OBJECTIVE, "fast").unwrap_err().to_string();
        assert_eq!(
            e,
            "annotation mose.io/objective=\"fast\": expected min-downtime or min-bandwidth"
        );
        let e = one(TECHNIQUE, "live").unwrap_err().to_string();
        assert!(e.contains("auto, cold, precopy, postcopy or hybrid"), "{e}");
        let e = one(STRICT, "yes").unwrap_err().to_string();
        assert!(e.ends_with("expected true or false"), "{e}");
        // a value with quotes or newlines cannot forge the message
        let e = one(MAX_DOWNTIME, "1\"\n").unwrap_err().to_string();
        assert!(e.contains(r#"="1\"\n""#), "{e}");
    }

    #[test]
    fn each_key_and_its_values() {
        for (v, want) in [
            ("auto", TechniqueChoice::Auto),
            ("cold", TechniqueChoice::Fixed(Technique::Cold)),
            ("precopy", TechniqueChoice::Fixed(Technique::Precopy)),
            ("postcopy", TechniqueChoice::Fixed(Technique::Postcopy)),
            ("hybrid", TechniqueChoice::Fixed(Technique::Hybrid)),
        ] {
            assert_eq!(one(TECHNIQUE, v).unwrap().technique, want);
        }
        assert!(one(TECHNIQUE, "Cold").is_err());
        assert_eq!(
            one(OBJECTIVE, "min-downtime").unwrap().objective,
            Objective::MinDowntime
        );
        assert!(!one(STRICT, "false").unwrap().strict);
        assert!(one(STRICT, "").is_err());
        assert_eq!(
            one(MAX_MIGRATION_TIME, "1m").unwrap().max_migration_time,
            Some(Duration::from_secs(60))
        );
        assert!(one(MAX_MIGRATION_TIME, "0s").is_err());
    }

    #[test]
    fn unknown_mose_keys_are_rejected_with_a_suggestion() {
        let e = one("mose.io/max-downtme", "200ms").unwrap_err();
        assert_eq!(
            e,
            AnnotationError::Unknown {
                key: "mose.io/max-downtme".into(),
                suggestion: Some(MAX_DOWNTIME)
            }
        );
        let s = e.to_string();
        assert!(s.contains("did you mean mose.io/max-downtime?"), "{s}");
        for k in ACCEPTED {
            assert!(s.contains(k), "{s}");
        }
        let s = one("mose.io/colour", "blue").unwrap_err().to_string();
        assert!(!s.contains("did you mean"), "{s}");
        // other prefixes are not MOSE's business
        assert!(one("mose.iox/whatever", "1").is_ok());
        assert!(one("example.com/max-downtime", "abc").is_ok());
    }

    #[test]
    fn technique_names_round_trip() {
        for t in Technique::ALL {
            assert_eq!(t.to_string().parse::<Technique>(), Ok(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert!("auto".parse::<Technique>().is_err());
        assert!(Technique::ALL.into_iter().all(Technique::is_implemented));
        let lazy: Vec<Technique> = Technique::ALL.into_iter().filter(|t| t.is_lazy()).collect();
        assert_eq!(lazy, [Technique::Postcopy, Technique::Hybrid]);
    }

    #[test]
    fn targets_json_form() {
        let t = KpiTargets {
            max_downtime: Some(Duration::from_millis(200)),
            max_migration_time: None,
            objective: Objective::MinBandwidth,
            max_bandwidth_bps: Some(300_000_000),
            technique: TechniqueChoice::Fixed(Technique::Cold),
            strict: true,
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"max_downtime_ms": 200.0, "max_migration_time_ms": null,
                "objective": "min-bandwidth", "max_bandwidth_bps": 300000000u64,
                "technique": "cold", "strict": true})
        );
        let back: KpiTargets = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
        // absent fields take their defaults
        let d: KpiTargets = serde_json::from_str("{}").unwrap();
        assert_eq!(d, KpiTargets::default());
        for bad in [
            r#"{"max_downtime_ms": -1}"#,
            r#"{"max_downtime_ms": 0}"#,
            r#"{"max_bandwidth_bps": 0}"#,
            r#"{"technique": "warp"}"#,
            r#"{"objective": "min-cost"}"#,
        ] {
            assert!(serde_json::from_str::<KpiTargets>(bad).is_err(), "{bad}");
        }
    }
}
