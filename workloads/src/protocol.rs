//! The state service's line protocol (one request line, one answer line).
//!
//! ```text
//! PING    -> seq=<n> sum=<16 hex> writes=<n>
//! VERIFY  -> ok seq=<n> sum=<16 hex> pages=<n>
//!          | corrupt first_bad_page=<n> expected=<16 hex> got=<16 hex>
//! STATS   -> {"state_mib":..,...}   (one line of JSON)
//! QUIT    -> closes the connection
//! other   -> error unknown command
//! ```
//!
//! `seq` is a process-global counter incremented per PING and held only in
//! memory: it continues across a checkpoint/restore (a migration) but
//! restarts at 1 if the service is restarted, which is what the probe checks.

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A parsed request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Liveness + sequence number.
    Ping,
    /// Full memory verification.
    Verify,
    /// JSON statistics.
    Stats,
    /// Close the connection.
    Quit,
}

/// Parses one request line (case-insensitive, surrounding whitespace ignored).
pub fn parse_request(line: &str) -> Result<Request> {
    let cmd = line.trim();
    Ok(match cmd.to_ascii_uppercase().as_str() {
        "PING" => Request::Ping,
        "VERIFY" => Request::Verify,
        "STATS" => Request::Stats,
        "QUIT" | "EXIT" => Request::Quit,
        _ => bail!("unknown command {cmd:?}"),
    })
}

/// Answer to PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PingReply {
    /// Process-global PING counter (first PING answers 1).
    pub seq: u64,
    /// Rolling checksum of the state.
    pub sum: u64,
    /// Page writes so far.
    pub writes: u64,
}

impl PingReply {
    /// The answer line, with trailing newline.
    pub fn to_line(&self) -> String {
        format!(
            "seq={} sum={:016x} writes={}\n",
            self.seq, self.sum, self.writes
        )
    }

    /// Parses an answer line.
    pub fn parse(line: &str) -> Result<Self> {
        let f = fields(line);
        Ok(Self {
            seq: num(&f, "seq")?,
            sum: hex(&f, "sum")?,
            writes: num(&f, "writes")?,
        })
    }
}

/// Answer to VERIFY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum VerifyReport {
    /// All pages intact.
    Ok {
        /// PING counter at the time of the check (not incremented by VERIFY).
        seq: u64,
        /// Rolling checksum.
        sum: u64,
        /// Pages checked.
        pages: u64,
    },
    /// Some page (or the checksum) does not match.
    Corrupt {
        /// First mismatching page (== page count when only the checksum is off).
        first_bad_page: u64,
        /// Recorded hash.
        expected: u64,
        /// Recomputed hash.
        got: u64,
    },
}

impl VerifyReport {
    /// True for [`VerifyReport::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, VerifyReport::Ok { .. })
    }

    /// The answer line, with trailing newline.
    pub fn to_line(&self) -> String {
        match self {
            Self::Ok { seq, sum, pages } => format!("ok seq={seq} sum={sum:016x} pages={pages}\n"),
            Self::Corrupt {
                first_bad_page,
                expected,
                got,
            } => format!(
                "corrupt first_bad_page={first_bad_page} expected={expected:016x} got={got:016x}\n"
            ),
        }
    }

    /// Parses an answer line.
    pub fn parse(line: &str) -> Result<Self> {
        let line = line.trim();
        let f = fields(line);
        if line.starts_with("ok ") {
            Ok(Self::Ok {
                seq: num(&f, "seq")?,
                sum: hex(&f, "sum")?,
                pages: num(&f, "pages")?,
            })
        } else if line.starts_with("corrupt ") {
            Ok(Self::Corrupt {
                first_bad_page: num(&f, "first_bad_page")?,
                expected: hex(&f, "expected")?,
                got: hex(&f, "got")?,
            })
        } else {
            bail!("unexpected VERIFY answer {line:?}")
        }
    }
}

fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn get<'a>(f: &[(&str, &'a str)], key: &str) -> Result<&'a str> {
    f.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .with_context(|| format!("field {key} missing"))
}

fn num(f: &[(&str, &str)], key: &str) -> Result<u64> {
    get(f, key)?
        .parse()
        .with_context(|| format!("field {key} is not a number"))
}

fn hex(f: &[(&str, &str)], key: &str) -> Result<u64> {
    u64::from_str_radix(get(f, key)?, 16).with_context(|| format!("field {key} is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("PING\n").expect("ping"), Request::Ping);
        assert_eq!(
            parse_request(" verify\r\n").expect("verify"),
            Request::Verify
        );
        assert_eq!(parse_request("STATS").expect("stats"), Request::Stats);
        assert_eq!(parse_request("quit").expect("quit"), Request::Quit);
        assert!(parse_request("PONG").is_err());
        assert!(parse_request("").is_err());
    }

    #[test]
    fn ping_round_trips() {
        let r = PingReply {
            seq: 12,
            sum: 0xdead_beef,
            writes: 3,
        };
        assert_eq!(r.to_line(), "seq=12 sum=00000000deadbeef writes=3\n");
        assert_eq!(PingReply::parse(&r.to_line()).expect("parse"), r);
        assert!(PingReply::parse("seq=x sum=0 writes=0").is_err());
        assert!(PingReply::parse("error unknown command").is_err());
    }

    #[test]
    fn verify_round_trips() {
        for r in [
            VerifyReport::Ok {
                seq: 5,
                sum: 1,
                pages: 16384,
            },
            VerifyReport::Corrupt {
                first_bad_page: 9,
                expected: 2,
                got: 3,
            },
        ] {
            assert_eq!(VerifyReport::parse(&r.to_line()).expect("parse"), r);
        }
        assert!(VerifyReport::parse("error").is_err());
    }
}
