//! The migration techniques, as annotations, the policy, the wire protocol
//! and results name them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A migration technique MOSE implements.
///
/// Cold and precopy are *eager* (the destination has all memory when the
/// container resumes); postcopy and hybrid are *lazy* (memory keeps arriving
/// after it resumes), which selection uses only when needed or asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Technique {
    /// Freeze, dump, transfer everything, restore.
    Cold,
    /// Copy memory in live rounds, then freeze and send what changed.
    Precopy,
    /// Freeze and dump, restore without memory, then move it all on demand
    /// and in the background while the container runs.
    Postcopy,
    /// Pre-copy rounds, then a freeze that sends no memory; what changed
    /// since the last round moves as in post-copy.
    Hybrid,
}

impl Technique {
    /// All techniques, in a stable order.
    pub const ALL: [Technique; 4] = [
        Technique::Cold,
        Technique::Precopy,
        Technique::Postcopy,
        Technique::Hybrid,
    ];

    /// The lowercase name used in annotations, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Technique::Cold => "cold",
            Technique::Precopy => "precopy",
            Technique::Postcopy => "postcopy",
            Technique::Hybrid => "hybrid",
        }
    }

    /// Whether MOSE can run this technique: all four since post-copy and
    /// hybrid landed (kept for callers that check).
    pub fn is_implemented(self) -> bool {
        true
    }

    /// Whether the container resumes before all its memory has arrived: the
    /// destination then depends on the source until the last page is in
    /// (anonymous memory moves after the restore).
    pub fn is_lazy(self) -> bool {
        matches!(self, Technique::Postcopy | Technique::Hybrid)
    }

    /// Whether memory is copied in rounds while the container runs.
    pub fn has_rounds(self) -> bool {
        matches!(self, Technique::Precopy | Technique::Hybrid)
    }
}

impl fmt::Display for Technique {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Technique {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Technique::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .or(match s {
                // the migration literature's spelling
                "pre-copy" => Some(Technique::Precopy),
                "post-copy" => Some(Technique::Postcopy),
                _ => None,
            })
            .ok_or_else(|| {
                format!("unknown technique {s:?}: expected cold, precopy, postcopy or hybrid")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn techniques_parse_and_print() {
        for t in Technique::ALL {
            assert_eq!(t.as_str().parse::<Technique>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!("post-copy".parse::<Technique>(), Ok(Technique::Postcopy));
        assert!("warm"
            .parse::<Technique>()
            .unwrap_err()
            .contains("cold, precopy, postcopy or hybrid"));
        assert!(Technique::Hybrid.is_lazy() && Technique::Hybrid.has_rounds());
        assert!(!Technique::Postcopy.has_rounds() && !Technique::Precopy.is_lazy());
    }
}
